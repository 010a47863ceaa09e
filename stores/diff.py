"""What differs between two stores, by content: feature sets, their parameters, clips, and committed arrays.

Provenance (who made a feature set, when, with which code and library versions, on which device), the
store's creation time and where each video was read from (`video_path`) are ignored: two labs that extract
the same corpus with the same parameters should hear "no difference". Clips are matched by clip id, not by
row, because rows are in the order each store first saw its clips.

Bit-identical is the verdict by default. Where numeric arrays differ, each array's largest difference is
reported in ulps (units in the last place; for integer arrays such as uint8 images, in units) and in absolute
terms, with the numeric environment (CPU, BLAS kernels) each side was computed in: stores extracted on different
CPU architectures may differ by rounding alone, and `tolerance` (in ulps) accepts that explicitly.

Speed: arrays are compared clip by clip through a hash of each clip's row, reading one storage unit (a shard,
or a chunk of rows) at a time, so memory stays at one shard. When both stores hold checksums from a finished
run (and no writer lock) and their clips sit in the same rows, a unit whose files have the same sha256 in
both stores is equal without being read: two extractions of one corpus with the same parameters compare from
their checksum files alone. diff trusts those checksums; `verify` is the command that checks them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stores.integrity import read_checksums
from stores.state import store_state
from stores.location import locate, reading
from stores.store import CLIP_COLUMNS, FeatureSet, FeatureStore

PROVENANCE = {"made_by", "made_at", "avstore_commit", "versions", "device"}
IGNORED_STORE_KEYS = {"created"}
IGNORED_CLIP_COLUMNS = {"video_path"}  # where the file was on the extracting machine, not what it holds


class DiffError(ValueError):
    """A diff option no comparison can use."""


@dataclass
class StoreDiff:
    a: str
    b: str
    store: dict[str, list] = field(default_factory=dict)  # store attribute -> [a, b]
    sets_only_a: list[str] = field(default_factory=list)
    sets_only_b: list[str] = field(default_factory=list)
    param_changes: list[dict] = field(default_factory=list)  # {kind, a, b, params: {key: [a, b]}}: explains the lists above
    clips_only_a: list[str] = field(default_factory=list)
    clips_only_b: list[str] = field(default_factory=list)
    clip_metadata: dict[str, dict[str, list]] = field(default_factory=dict)  # clip -> column -> [a, b]
    committed_only: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # set -> {"a": clips, "b": clips}
    arrays: dict[str, list[str]] = field(default_factory=dict)  # "set/array" -> clips whose rows differ beyond tolerance
    tolerance: int = 0  # ulps accepted as "the same" in numeric arrays
    tolerated: dict[str, list[str]] = field(default_factory=dict)  # "set/array" -> clips that differ within tolerance
    array_stats: dict[str, dict] = field(default_factory=dict)  # "set/array" -> {max_ulps, max_abs, clips}
    numeric: dict[str, list] = field(default_factory=dict)  # set with differing arrays -> [A's environments, B's]

    @property
    def identical(self) -> bool:
        return not (self.store or self.sets_only_a or self.sets_only_b or self.clips_only_a or self.clips_only_b
                    or self.clip_metadata or self.committed_only or self.arrays)

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "identical": self.identical, "store": self.store,
            "feature_sets": {"only_a": self.sets_only_a, "only_b": self.sets_only_b, "param_changes": self.param_changes},
            "clips": {"only_a": self.clips_only_a, "only_b": self.clips_only_b, "metadata": self.clip_metadata},
            "committed_only": self.committed_only, "arrays": self.arrays, "tolerance": self.tolerance,
            "tolerated": self.tolerated, "array_stats": self.array_stats, "numeric": self.numeric,
        }

    def lines(self, show: int = 5) -> list[str]:
        """A human summary, at most `show` clip ids per line."""
        def some(ids: list[str]) -> str:
            return ", ".join(ids[:show]) + (f", ... ({len(ids)} in all)" if len(ids) > show else "")

        out = [f"{name}: within {_ulps(self.tolerance)} for {some(clips)} ({self._stats(name)})" for name, clips in self.tolerated.items()]
        if self.identical:
            return (out + [f"no difference beyond {_ulps(self.tolerance)}"]) if out else ["no difference"]
        out += [f"store attribute {k}: {va!r} (A) vs {vb!r} (B)" for k, (va, vb) in self.store.items()]
        out += [f"feature set only in A: {name}" for name in self.sets_only_a]
        out += [f"feature set only in B: {name}" for name in self.sets_only_b]
        for change in self.param_changes:
            params = ", ".join(f"{k} {va!r} -> {vb!r}" for k, (va, vb) in change["params"].items())
            out.append(f"  {change['kind']} parameters {change['a']} -> {change['b']}: {params}")
        if self.clips_only_a:
            out.append(f"clips only in A: {some(self.clips_only_a)}")
        if self.clips_only_b:
            out.append(f"clips only in B: {some(self.clips_only_b)}")
        for clip, columns in list(self.clip_metadata.items())[:show]:
            out.append(f"clip {clip}: " + ", ".join(f"{c} {va!r} -> {vb!r}" for c, (va, vb) in columns.items()))
        if len(self.clip_metadata) > show:
            out.append(f"... clip metadata differs for {len(self.clip_metadata)} clips in all")
        for name, sides in self.committed_only.items():
            for side in ("a", "b"):
                if sides[side]:
                    out.append(f"{name}: committed only in {side.upper()}: {some(sides[side])}")
        out += [f"{name}: differs for {some(clips)}" + (f" ({self._stats(name)})" if name in self.array_stats else "")
                for name, clips in self.arrays.items()]
        for name, (env_a, env_b) in self.numeric.items():
            if env_a == env_b:
                out.append(f"numeric environment of {name}: the same on both sides ({_describe(env_a)})")
            else:
                out.append(f"numeric environment of {name}: A {_describe(env_a)}; B {_describe(env_b)}")
        return out

    def _stats(self, name: str) -> str:
        stats = self.array_stats[name]
        return f"max {_ulps(stats['max_ulps'])}, {stats['max_abs']:.3g} absolute"


def _ulps(n: int) -> str:
    return f"{n} ulp" if n == 1 else f"{n} ulps"


def _describe(environments: list[dict]) -> str:
    return " | ".join(describe_environment(env) for env in environments) if environments else "not recorded"


def describe_environment(env: dict) -> str:
    """CPU, BLAS with its kernel architecture, torch's CPU capability, pinned threads: one line."""
    blas = [f"{lib.get('internal_api')} {lib.get('version', '')} {lib.get('architecture', '')}".strip()
            for lib in env.get("libraries", []) if lib.get("user_api") == "blas"]
    return (f"{env.get('machine')} {env.get('cpu')}, {', '.join(blas) or 'no BLAS'}, "
            f"torch {env.get('torch_cpu_capability')}, {env.get('pinned_threads')} thread(s)")


def diff_stores(a: str, b: str, tolerance: int = 0) -> StoreDiff:
    """What differs between stores `a` and `b`; numeric arrays within `tolerance` ulps count as the same."""
    store_a, store_b = FeatureStore.open(a), FeatureStore.open(b)
    result = StoreDiff(a, b, tolerance=tolerance)
    info_a, info_b = store_a.info, store_b.info
    for key in sorted((set(info_a) | set(info_b)) - IGNORED_STORE_KEYS):
        if info_a.get(key) != info_b.get(key):
            result.store[key] = [info_a.get(key), info_b.get(key)]

    sets_a = {fs.name: fs for fs in store_a.feature_sets()}
    sets_b = {fs.name: fs for fs in store_b.feature_sets()}
    result.sets_only_a = sorted(set(sets_a) - set(sets_b))
    result.sets_only_b = sorted(set(sets_b) - set(sets_a))
    result.param_changes = _param_changes([sets_a[n] for n in result.sets_only_a], sets_a, [sets_b[n] for n in result.sets_only_b], sets_b)

    table_a, table_b = store_a.clip_table(), store_b.clip_table()
    rows_a = {str(c): r for r, c in enumerate(table_a["clip_id"])}
    rows_b = {str(c): r for r, c in enumerate(table_b["clip_id"])}
    result.clips_only_a = sorted(set(rows_a) - set(rows_b))
    result.clips_only_b = sorted(set(rows_b) - set(rows_a))
    shared = sorted(set(rows_a) & set(rows_b))
    for clip in shared:
        changed = {c: [_plain(table_a[c][rows_a[clip]]), _plain(table_b[c][rows_b[clip]])] for c in CLIP_COLUMNS
                   if c not in IGNORED_CLIP_COLUMNS and table_a[c][rows_a[clip]] != table_b[c][rows_b[clip]]}
        if changed:
            result.clip_metadata[clip] = changed

    ids = np.asarray(shared, dtype=object)
    ra = np.asarray([rows_a[c] for c in shared], dtype=np.int64)
    rb = np.asarray([rows_b[c] for c in shared], dtype=np.int64)
    same_rows = np.array_equal(table_a["clip_id"], table_b["clip_id"])
    sums_a, sums_b = _trusted_checksums(store_a.location), _trusted_checksums(store_b.location)
    for name in sorted(set(sets_a) & set(sets_b)):
        fa, fb = sets_a[name], sets_b[name]
        done_a, done_b = fa.done()[ra], fb.done()[rb]
        only = {"a": sorted(ids[done_a & ~done_b].tolist()), "b": sorted(ids[done_b & ~done_a].tolist())}
        if only["a"] or only["b"]:
            result.committed_only[name] = only
        both = done_a & done_b
        for array in sorted(set(fa.group.array_keys()) | set(fb.group.array_keys())):
            differ = _array_differs(fa, fb, array, ids[both], ra[both], rb[both], same_rows, sums_a, sums_b)
            if not differ:
                continue
            key = f"{name}/{array}"
            stats = _difference_stats(fa, fb, array, differ, rows_a, rows_b)
            if stats is not None:
                result.array_stats[key] = stats
            if stats is not None and stats["max_ulps"] <= tolerance:
                result.tolerated[key] = differ
            else:
                result.arrays[key] = differ
            result.numeric[name] = [fa.numeric_environments, fb.numeric_environments]
    return result


def diff_and_report(store_a: str, store_b: str, *, tolerance: int = 0, as_json: bool = False) -> int:
    """`cli.py diff`: print how two stores differ in content (text or JSON); exit code 1 when they do, as `diff`."""
    if tolerance < 0:
        raise DiffError(f"--tolerance must be 0 or more ulps, not {tolerance}")
    with reading(f"store '{store_a}'"):
        FeatureStore.open(store_a)
    with reading(f"store '{store_b}'"):
        FeatureStore.open(store_b)
    with reading(f"stores '{store_a}' and '{store_b}'"):
        result = diff_stores(store_a, store_b, tolerance=tolerance)
    print(json.dumps(result.as_dict(), indent=2, default=str) if as_json else "\n".join(result.lines()))
    return 0 if result.identical else 1


def _difference_stats(fa: FeatureSet, fb: FeatureSet, array: str, clips: list[str], rows_a: dict, rows_b: dict) -> dict | None:
    """The largest difference over `clips` in ulps and in absolute terms; None where ulps mean nothing
    (strings, booleans, or an array whose layout differs)."""
    if array not in fa.group or array not in fb.group:
        return None
    xa, xb = fa[array], fb[array]
    if xa.dtype != xb.dtype or xa.shape[1:] != xb.shape[1:] or xa.dtype.kind not in "fiu":
        return None
    max_ulps, max_abs = 0, 0.0
    for clip in clips:
        va, vb = np.asarray(xa[rows_a[clip]]), np.asarray(xb[rows_b[clip]])
        max_ulps = max(max_ulps, int(ulp_distance(va, vb).max(initial=0)))
        max_abs = max(max_abs, float(np.nanmax(np.abs(va.astype(np.float64) - vb.astype(np.float64)), initial=0.0)))
    return {"max_ulps": max_ulps, "max_abs": max_abs, "clips": clips}


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise distance in units in the last place for floats (how many representable values lie between
    them), and plain difference for integers (one unit of a uint8 image is its ulp)."""
    if a.dtype.kind in "iu":
        return np.abs(a.astype(np.int64) - b.astype(np.int64))
    signed = np.dtype(f"i{a.dtype.itemsize}")
    floor = np.iinfo(signed).min

    def ordered(x: np.ndarray) -> np.ndarray:  # bit patterns made monotonic in the value: -0.0 and 0.0 meet at 0
        bits = np.ascontiguousarray(x).view(signed).astype(np.int64)
        return np.where(bits < 0, floor - bits, bits)

    if a.dtype.itemsize == 8:  # an int64 difference could overflow: exact Python integers (no such array is large)
        return np.abs(ordered(a).astype(object) - ordered(b).astype(object))
    return np.abs(ordered(a) - ordered(b))


def _param_changes(only_a: list[FeatureSet], sets_a: dict[str, FeatureSet],
                   only_b: list[FeatureSet], sets_b: dict[str, FeatureSet]) -> list[dict]:
    """For each feature set on one side only, the parameters that set it apart from its closest sibling (same
    kind, fewest differing parameters) on the other side, e.g. `n_mels 32 -> 24`."""
    pairs: dict[tuple[str, str], dict] = {}
    for one, others, a_side in ((only_a, sets_b, True), (only_b, sets_a, False)):
        for fs in one:
            candidates = [o for o in others.values() if o.kind == fs.kind]
            if not candidates:
                continue
            fa, fb = min(((fs, o) if a_side else (o, fs) for o in candidates), key=lambda p: len(_changed(*p)))
            pairs[(fa.name, fb.name)] = {"kind": fs.kind, "a": fa.name, "b": fb.name, "params": _changed(fa, fb)}
    return list(pairs.values())


def _changed(fa: FeatureSet, fb: FeatureSet) -> dict[str, list]:
    return {k: [fa.params.get(k), fb.params.get(k)] for k in sorted(set(fa.params) | set(fb.params))
            if fa.params.get(k) != fb.params.get(k)}


@dataclass
class _Sums:
    """A finished store's checksums, indexed for diff: each array's metadata hash and files per storage unit."""

    meta: dict[str, str]  # array path -> sha256 of its zarr.json
    units: dict[tuple[str, int], frozenset]  # (array path, unit index along rows) -> {(file, sha256)}


def _trusted_checksums(location: str) -> _Sums | None:
    """The store's checksums if they describe its files as they are now (written by a finished run)."""
    where = locate(location)
    if not store_state(where).finished:  # being written, or a run stopped after writing: the list may be stale
        return None
    meta: dict[str, str] = {}
    units: dict[tuple[str, int], set] = {}
    for rel, entry in read_checksums(where).items():
        parts = rel.split("/")
        if parts[-1] == "zarr.json":
            meta["/".join(parts[:-1])] = entry["sha256"]
        elif "c" in parts[:-1]:
            i = parts.index("c")
            units.setdefault(("/".join(parts[:i]), int(parts[i + 1])), set()).add((rel, entry["sha256"]))
    return _Sums(meta, {k: frozenset(v) for k, v in units.items()})


def _array_differs(fa: FeatureSet, fb: FeatureSet, array: str, ids: np.ndarray, ra: np.ndarray, rb: np.ndarray,
                   same_rows: bool, sums_a: _Sums | None, sums_b: _Sums | None) -> list[str]:
    """Clip ids (committed in both) whose row of `array` differs; every clip if the array's layout differs."""
    if array not in fa.group or array not in fb.group:
        return sorted(ids.tolist()) or ["(array missing on one side)"]
    xa, xb = fa[array], fb[array]
    if xa.dtype != xb.dtype or xa.shape[1:] != xb.shape[1:]:
        return sorted(ids.tolist()) or ["(array layout differs)"]
    if not len(ids):
        return []
    unit = _unit_rows(xa)
    path = f"features/{fa.name}/{array}"
    if same_rows and sums_a and sums_b and path in sums_a.meta and sums_a.meta[path] == sums_b.meta.get(path):
        # same metadata (shape, chunking, codecs) and same clips per row: a unit with identical files is equal
        read = {u for u in {int(r) // unit for r in ra} if sums_a.units.get((path, u)) != sums_b.units.get((path, u))}
        keep = np.asarray([int(r) // unit in read for r in ra], dtype=bool)
        ids, ra, rb = ids[keep], ra[keep], rb[keep]
    digests_a, digests_b = _row_digests(xa, ra), _row_digests(xb, rb)
    return sorted(str(c) for c, r, s in zip(ids, ra, rb) if digests_a[int(r)] != digests_b[int(s)])


def _unit_rows(array) -> int:
    """Rows per stored file: a shard's rows for sharded arrays, a chunk's otherwise."""
    return int((array.shards or array.chunks)[0])


def _row_digests(array, rows: np.ndarray) -> dict[int, bytes]:
    """Hash of each requested row, reading each storage unit that holds one of them once."""
    unit, out = _unit_rows(array), {}
    for start in sorted({int(r) // unit * unit for r in rows}):
        block = array[start : min(start + unit, array.shape[0])]
        for r in rows[(rows >= start) & (rows < start + unit)]:
            out[int(r)] = _digest(block[int(r) - start])
    return out


def _digest(value: Any) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    value = np.asarray(value)
    if value.dtype.kind in "OUT":  # strings
        h.update("\x00".join(str(v) for v in value.ravel()).encode())
    else:
        h.update(str(value.dtype).encode() + np.ascontiguousarray(value).tobytes())
    return h.digest()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
