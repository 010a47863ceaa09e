"""Model inputs straight from the store: which arrays an encoder reads, and how they become tensors.

Nothing here decodes a video: that is the point of the store. A split small enough for memory is read once, as
uint8 (only its own rows), and turned into float tensors a batch at a time on the training device (cheap, and 4x
less memory than float); a larger one is streamed from Zarr by the trainer's loader (encoders/loader.py), a group
of rows per Zarr call. What a fusion's arrays mean to a model (its channels, how it is ablated, normalised or
rebuilt on the device) comes from its FusionSpec (pipeline/fuse.py), so a new fusion needs no line here.

A fusion with an `on_device` builder (`concat`, `stack`) can also be built on the device from the stored faces and
chunks (`fuse_on_device`): 4 bytes per pixel read instead of the stored fusion's 6, and the same tensor bit for bit.
Their videos are always built so: the store does not hold them (FusionSpec.built_on_read, issue 24).

Every uint8 image is mapped to [-1, 1] the same way, whatever its modality (pipeline.fuse.to_unit_range); a
fusion stored already normalised (`sum`, float16) says so by its `normalise`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import torch

from pipeline.fuse import FUSIONS, FusionSpec, device_fusions, get_fusion, to_unit_range
from stores.codecs import undo_filters
from stores.shards import EMPTY, decompress
from stores.store import DamagedChunkError, FeatureSet, FeatureStore, StoreError

MODALITIES = ("audio", "vision", "av")


@dataclass(frozen=True)
class Part:
    """One model input: `array` of feature set `source` ("faces", "audio", "fusion-<name>", "lld" or "embed")."""

    source: str
    array: str


SEQUENCE_PARTS = (Part("lld", "lld"), Part("lld", "lld_frames"), Part("embed", "embedding"), Part("embed", "found"))
"""What a "sequences" encoder (seed 002's ladder) reads: the ComParE LLD frames, valid up to `lld_frames`, and
the face embeddings, valid where `found` (stores/sequences.py picks the two feature sets)."""


@dataclass(frozen=True)
class InputRecipe:
    input_kind: str  # the encoder's: "image" | "video" | "pair-image" | "pair-video" | "sequences"
    modality: str
    fusion: str
    parts: tuple[Part, ...]
    fuse_on_device: bool = False  # parts are (faces, audio); `to_model_inputs` fuses them

    @property
    def fusion_spec(self) -> FusionSpec | None:
        """The fusion a single-input av encoder reads (None for unimodal, pair and sequence encoders)."""
        return get_fusion(self.fusion) if self.modality == "av" and self.input_kind in ("image", "video") else None

    @property
    def channels(self) -> int:
        """Channels of the (first) model input, for building the encoder's stem."""
        if self.modality == "audio" or self.input_kind.startswith("pair"):
            return 1 if self.modality == "audio" else 3
        return self.fusion_spec.channels if self.fusion_spec is not None else 3


def recipe_for(input_kind: str, modality: str, fusion: str, *, square_only: bool = False, fuse_on_device: bool = False) -> InputRecipe:
    """The arrays an encoder of `input_kind` reads for `modality` and `fusion`; ValueError lists valid choices.

    `fuse_on_device` reads the faces and audio of a fusion with an `on_device` builder instead of the stored fusion
    (ignored for the others, which would not read fewer bytes or could not be rebuilt exactly). An array the store
    does not hold (the fusion's `built_on_read`: the concat and stack videos) is always built so.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality '{modality}'; choose one of {', '.join(MODALITIES)}")
    valid = valid_fusions(input_kind, modality, square_only=square_only)
    if fusion not in valid:
        raise ValueError(f"a {input_kind} encoder with modality {modality} takes --fusion {' | '.join(valid)}, not '{fusion}'")
    if input_kind == "sequences":
        return InputRecipe(input_kind, modality, fusion, SEQUENCE_PARTS)
    if input_kind == "pair-video":
        parts = (Part("faces", "crops"), Part("audio", "chunks"))
    elif input_kind == "pair-image":
        parts = (Part("faces", "middle"), Part("audio", "spec"))
    elif modality == "audio":
        parts = (Part("audio", "spec" if input_kind == "image" else "chunks"),)
    elif modality == "vision":
        parts = (Part("faces", "middle" if input_kind == "image" else "crops"),)
    elif (fuse_on_device and get_fusion(fusion).on_device is not None) or input_kind in get_fusion(fusion).built_on_read:
        parts = (Part("faces", "middle"), Part("audio", "spec")) if input_kind == "image" else (Part("faces", "crops"), Part("audio", "chunks"))
        return InputRecipe(input_kind, modality, fusion, parts, fuse_on_device=True)
    else:  # the model input (the fusion's "image" or "video" array), then what only ablation reads
        parts = tuple(Part(f"fusion-{fusion}", array) for array in (input_kind, *get_fusion(fusion).ablation_arrays))
    return InputRecipe(input_kind, modality, fusion, parts)


def valid_fusions(input_kind: str, modality: str, *, square_only: bool = False) -> list[str]:
    """Fusions an encoder can read, from the registry: those that feed its input kind and, for `square_only` encoders
    (ViT-B/16, VideoMAE), fit a square input (not side-by-side S x 2S)."""
    if input_kind.startswith("pair") or input_kind == "sequences":
        return ["none"] if modality == "av" else []  # the model itself fuses
    if modality != "av":
        return ["none"]
    return [name for name, spec in FUSIONS.items() if input_kind in spec.kinds and (spec.square or not square_only)]


def default_fusion(input_kind: str, modality: str) -> str:
    """The fusion a run reads when it names none: concat (the comparison study's) for a single-input av encoder,
    none for the others (unimodal, and the pair and sequence encoders, which fuse themselves)."""
    return "concat" if modality == "av" and input_kind in ("image", "video") else "none"


def select_feature_sets(store: FeatureStore, faces: str | None = None, audio: str | None = None) -> tuple[FeatureSet, FeatureSet]:
    """The faces and audio feature sets to train from; ambiguous stores need a fingerprint."""

    def pick(kind: str, wanted: str | None) -> FeatureSet:
        sets = store.feature_sets(kind)
        if wanted:
            sets = [s for s in sets if s.fingerprint.startswith(wanted)]
        if len(sets) == 1:
            return sets[0]
        names = ", ".join(s.fingerprint for s in store.feature_sets(kind)) or "none"
        raise StoreError(f"store '{store.location}' has {len(sets)} matching {kind} feature sets ({names}); choose one with --{kind} FINGERPRINT")

    return pick("faces", faces), pick("audio", audio)


def fusion_set(store: FeatureStore, name: str, faces: FeatureSet, audio: FeatureSet) -> FeatureSet | None:
    """The cached fusion made from exactly these faces and audio, if any."""
    for fs in store.feature_sets(f"fusion-{name}"):
        if fs.params.get("faces") == faces.fingerprint and fs.params.get("audio") == audio.fingerprint:
            return fs
    return None


def read_rows(array, rows: np.ndarray, *, rows_per_call: int = 256, out: np.ndarray | None = None) -> np.ndarray:
    """Rows `rows` of a Zarr array, in that order, reading those rows only: one slice per run of neighbours.

    Slices, because zarr 3 reads a slice of a shard ~20x faster per row than an integer selection (`oindex`)
    and ~2x faster than row by row; at most `rows_per_call` rows per slice, so a temporary copy stays bounded.
    (The seed code read the covering range: every row between a split's first and last clip, most of the
    store for a training split.)
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), *array.shape[1:]), array.dtype) if out is None else out
    direct = ShardReader.for_array(array)
    if direct is not None:
        direct.read(rows, out)
        return out
    try:
        _read_runs(array, rows, rows_per_call, out)
    except (RuntimeError, ValueError) as err:  # zstd's frame checksum, or the shard index's crc32c
        if "checksum" not in str(err):
            raise
        store, per_file = str(getattr(array.store, "root", array.store)), int((array.shards or array.chunks)[0])
        files = sorted({f"{store}/{array.path}/c/{r // per_file}/" + "/".join(["0"] * (array.ndim - 1)) for r in rows.tolist()})
        raise DamagedChunkError.of(" or ".join(files[:3]), array.path, sorted(set(rows.tolist())), store) from err
    return out


def _read_runs(array, rows: np.ndarray, rows_per_call: int, out: np.ndarray) -> None:
    """read_rows through zarr: one slice per run of neighbouring rows, at most `rows_per_call` each."""
    order = np.argsort(rows, kind="stable")
    ranked = rows[order]
    starts = [0, *(np.flatnonzero(np.diff(ranked) > 1) + 1).tolist(), len(rows)]  # runs of neighbouring rows
    for a, b in zip(starts[:-1], starts[1:]):
        while a < b:
            lo = int(ranked[a])
            c = a + int(np.searchsorted(ranked[a:b], lo + rows_per_call))  # the rows of this run below lo + rows_per_call
            out[order[a:c]] = array[lo : int(ranked[c - 1]) + 1][ranked[a:c] - lo]
            a = c


class ShardReader:
    """This store's large arrays on a local disk read without zarr's per-chunk machinery: the codec limit.

    They are written as shards of rows, one compressed chunk per row, the shard's index at its end
    (stores/store.py): bytes + zstd, after the deltas and transposes of stores/codecs.py where the chain has
    them, or bytes + crc32c (the `raw` chain of fused images). zarr 3 spends ~1.7 ms per chunk around the decode;
    here a row is one `pread`, one zstd decode (or checksum) and the filters undone in numpy straight into the
    output. Anything else (a remote store, another codec chain, a dtype wider than a byte) goes through zarr;
    tests check both give the same arrays. Like zarr, it checks the shard index's crc32c and each chunk's zstd
    checksum or crc32c (stores made since issue 24), and raises DamagedChunkError naming the file and rows rather
    than return wrong values.
    """

    def __init__(self, folder: Path, shard_rows: int, suffix: str, fill: int, filters: list | None = None,
                 array: str = "", store: str = "", compressed: bool = True) -> None:
        self.folder, self.shard_rows, self.suffix, self.fill = folder, shard_rows, suffix, fill
        self.filters = list(filters or [])
        self.array, self.store = array, store
        self.compressed = compressed  # zstd; else the bytes and a crc32c (the `raw` chain)

    @classmethod
    def for_array(cls, array) -> "ShardReader | None":
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
        from zarr.storage import LocalStore

        from stores.codecs import is_fast

        codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
        if not isinstance(array.store, LocalStore) or len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or array.dtype != np.uint8:
            return None
        shard = codecs[0]
        kinds = [type(c) for c in shard.codecs]
        if (tuple(shard.chunk_shape) != (1, *array.shape[1:]) or len(kinds) < 2
                or kinds[-2:] not in ([BytesCodec, ZstdCodec], [BytesCodec, Crc32cCodec])
                or not all(is_fast(c) for c in shard.codecs[:-2])
                or shard.index_location.value != "end" or [type(c).__name__ for c in shard.index_codecs] != ["BytesCodec", "Crc32cCodec"]
                or getattr(array.metadata.chunk_key_encoding, "separator", None) != "/"):
            return None
        return cls(Path(array.store.root) / array.path / "c", int(array.metadata.chunk_grid.chunk_shape[0]), "/".join(["0"] * (array.ndim - 1)),
                   int(array.metadata.fill_value), shard.codecs[:-2], array.path, str(array.store.root), compressed=kinds[-1] is ZstdCodec)

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """out[k] = row rows[k], decoded in place."""
        order = np.argsort(rows, kind="stable")
        shard_of = rows[order] // self.shard_rows
        for shard in np.unique(shard_of):
            picked = order[shard_of == shard]
            try:
                fd = os.open(self.folder / str(int(shard)) / self.suffix, os.O_RDONLY)
            except FileNotFoundError:  # nothing written to this shard: fill value
                out[picked] = self.fill
                continue
            file = self.folder / str(int(shard)) / self.suffix
            try:
                size = os.fstat(fd).st_size
                n_index = self.shard_rows * 16
                raw = os.pread(fd, n_index + 4, max(0, size - n_index - 4))
                if len(raw) != n_index + 4 or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                    raise DamagedChunkError.of(str(file), self.array, sorted(int(rows[k]) for k in picked), self.store)
                index = np.frombuffer(raw[:-4], dtype="<u8").reshape(-1, 2)
                damaged = []
                for k in picked:
                    offset, nbytes = index[rows[k] % self.shard_rows]
                    try:
                        self._decode_one(fd, int(offset), int(nbytes), out[k])
                    except (RuntimeError, ValueError):  # zstd: "doesn't match checksum", a corrupt frame, a wrong size
                        damaged.append(int(rows[k]))
                if damaged:
                    raise DamagedChunkError.of(str(file), self.array, sorted(damaged), self.store)
            finally:
                os.close(fd)

    def _decode_one(self, fd: int, offset: int, nbytes: int, out: np.ndarray) -> None:
        if offset == EMPTY:
            out[...] = self.fill
        elif self.filters:
            scratch, work = _scratch(out.size)
            decompress(os.pread(fd, nbytes, offset), self.compressed, out=scratch)
            undo_filters(scratch, self.filters, out[None], _torch_cumsum, work)
        else:
            decompress(os.pread(fd, nbytes, offset), self.compressed, out=out)


_SCRATCH = threading.local()


def _scratch(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Two uint8 buffers of `nbytes`, kept per thread for every row it decodes: fresh pages for each 4.8 MB row
    cost about as much as undoing its deltas."""
    held = getattr(_SCRATCH, "buffers", None)
    if held is None or held[0].size < nbytes:
        held = _SCRATCH.buffers = (np.empty(nbytes, np.uint8), np.empty(nbytes, np.uint8))
    return held[0][:nbytes], held[1][:nbytes]


def _torch_cumsum(values: np.ndarray, out: np.ndarray) -> None:
    """uint8 running sum (wrapping, as numcodecs' Delta decodes) with torch's kernel: ~4x numpy's."""
    torch.cumsum(torch.from_numpy(values), 0, dtype=torch.uint8, out=torch.from_numpy(out))


class StoreSplit(torch.utils.data.Dataset):
    """One split of the store as (inputs..., label) rows: in memory, or read from Zarr (`read` many at once)."""

    def __init__(self, location: str, sets: dict[str, str], recipe: InputRecipe, rows: np.ndarray, labels: np.ndarray, *, in_memory: bool):
        self.location, self.sets, self.recipe = location, sets, recipe
        self.rows, self.labels = rows, torch.as_tensor(labels, dtype=torch.long)
        self.arrays = None
        self.memory = None
        self._face_mask = None
        if in_memory:
            self.memory = [torch.from_numpy(read_rows(self._array(p), rows)) for p in recipe.parts]

    def _array(self, part: Part):
        if self.arrays is None:  # opened lazily: in each DataLoader worker, after the spawn
            store = FeatureStore.open(self.location)
            self.arrays = {p: store.root[f"features/{self.sets[p.source]}/{p.array}"] for p in self.recipe.parts}
        return self.arrays[part]

    def __len__(self) -> int:
        return len(self.rows)

    def face_mask(self, positions: np.ndarray | None = None) -> torch.Tensor:
        """(n, T) bool for split positions `positions` (default: all): whether each step's face crop holds a verified
        face (the faces set's `found`; the other steps' crops are zeros). A model can leave those steps out, as it
        can the audio steps `pooled_valid` marks. Read once (T bools per clip), the first time it is asked for; the
        loader's batches give their split positions."""
        if self._face_mask is None:
            found = FeatureStore.open(self.location).root[f"features/{self.sets['faces']}/found"]
            self._face_mask = torch.from_numpy(read_rows(found, self.rows).astype(bool))
        return self._face_mask if positions is None else self._face_mask[torch.as_tensor(np.asarray(positions), dtype=torch.long)]

    def __getitem__(self, i: int):
        if self.memory is not None:
            return (*[m[i] for m in self.memory], self.labels[i])
        row = int(self.rows[i])
        return (*[torch.from_numpy(np.asarray(self._array(p)[row])) for p in self.recipe.parts], self.labels[i])

    def row_layout(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of one row of each part, as `read` returns them."""
        if self.memory is not None:
            return [(tuple(m.shape[1:]), m.dtype) for m in self.memory]
        return [(tuple(a.shape[1:]), torch.from_numpy(np.empty(0, a.dtype)).dtype) for a in map(self._array, self.recipe.parts)]

    def row_nbytes(self) -> int:
        """Bytes of one row, all parts together."""
        return sum(int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size() for shape, dtype in self.row_layout())

    def read(self, positions: np.ndarray, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The stored uint8 (or float16) tensors of split positions `positions`: a Zarr slice per run of neighbours.

        For a streamed split, `out` (one contiguous tensor per part, `len(positions)` rows) is filled instead of
        new tensors: a loader's reused shared buffers, whose pages are already mapped (fresh pages cost about
        half as much again as decoding into them, for 3D concat).
        """
        if self.memory is not None:
            index = torch.as_tensor(positions)
            return [m.index_select(0, index) for m in self.memory]
        rows = self.rows[np.asarray(positions)]
        in_worker = torch.utils.data.get_worker_info() is not None
        parts = []
        for k, p in enumerate(self.recipe.parts):
            array = self._array(p)
            shape = (len(rows), *array.shape[1:])
            if out is not None:
                target = out[k]
            elif in_worker:  # decoded straight into shared memory: handing the batch to the trainer copies nothing
                dtype = torch.from_numpy(np.empty(0, array.dtype)).dtype
                storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * array.dtype.itemsize)
                target = torch.empty(0, dtype=dtype).set_(storage).view(shape)
            else:
                target = torch.from_numpy(np.empty(shape, array.dtype))
            read_rows(array, rows, rows_per_call=max(1, len(rows)), out=target.numpy())
            parts.append(target)
        return parts

    def __getstate__(self) -> dict:
        return {**self.__dict__, "arrays": None}  # workers open the store themselves

    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.memory) if self.memory is not None else 0


def to_model_inputs(recipe: InputRecipe, raw: list[torch.Tensor]) -> list[torch.Tensor]:
    """Stored layout (N, [T,] H, W[, C]) -> the encoder's layout, as float in [-1, 1]."""
    if recipe.input_kind == "sequences":
        return sequence_inputs(*raw)
    fusion = recipe.fusion_spec
    if fusion is not None:
        stored = fuse_on_device(recipe.fusion, *raw) if recipe.fuse_on_device else raw[0]  # raw[1:]: for ablation only
        return [_layout(recipe, 0, fusion.normalise(stored))]
    return [_layout(recipe, k, _unit(x)) for k, x in enumerate(raw)]


def fuse_on_device(fusion: str, faces: torch.Tensor, spectrogram: torch.Tensor) -> torch.Tensor:
    """The stored fusion of a batch, built where the tensors are by its spec's `on_device` (as pipeline/fuse.py does).

    faces (N, [T,] S, S, 3) and spectrogram (N, [T,] S, S) uint8 -> e.g. (N, [T,] S, 2S, 3) for concat.
    """
    build = get_fusion(fusion).on_device
    if build is None:
        raise ValueError(f"fusion '{fusion}' is not built on the device; only {', '.join(device_fusions())} are")
    return build(faces, spectrogram)


def sequence_inputs(lld: torch.Tensor, lld_frames: torch.Tensor, embedding: torch.Tensor, found: torch.Tensor) -> list[torch.Tensor]:
    """Stored LLDs (N, F, 130) + frame counts (N,) and embeddings (N, T, D) + found (N, T) -> float values and
    boolean validity masks: [lld, lld_mask (N, F), embedding, found]."""
    lld_mask = torch.arange(lld.shape[1], device=lld.device) < lld_frames.to(torch.long)[:, None]
    return [lld.float(), lld_mask, embedding.float(), found.bool()]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return to_unit_range(x) if x.dtype == torch.uint8 else x.float()


def _layout(recipe: InputRecipe, k: int, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:  # (N, H, W) gray image
        return x[:, None]
    if recipe.input_kind == "pair-video":
        return x.permute(0, 1, 4, 2, 3) if x.dim() == 5 else x[:, :, None]  # (N, T, C, H, W)
    if x.dim() == 4 and recipe.input_kind == "video" and recipe.parts[k].array == "chunks":
        return x[:, None]  # (N, T, H, W) gray chunks -> (N, 1, T, H, W)
    if x.dim() == 4:
        return x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return x.permute(0, 4, 1, 2, 3)  # (N, T, H, W, C) -> (N, C, T, H, W)


def ablate(recipe: InputRecipe, inputs: list[torch.Tensor], raw: list[torch.Tensor], which: str) -> list[torch.Tensor]:
    """Zero the `which` ("audio" or "vision") half of a multimodal input, as the study's "ablated" rows did.

    Zero is applied to the model's input (after normalisation), i.e. the mid-grey of [-1, 1]. For sequences the
    modality's validity mask is zeroed too: the ladder then gives its layer 0 the training average.
    """
    if recipe.modality != "av":
        raise ValueError("--ablate needs a multimodal (av) run")
    if which not in ("audio", "vision"):
        raise ValueError(f"--ablate takes audio or vision, not '{which}'")
    inputs = [x.clone() for x in inputs]
    if recipe.input_kind == "sequences":  # values zeroed and no step valid: the model sees the modality absent
        for k in (0, 1) if which == "audio" else (2, 3):
            inputs[k].zero_()
    elif recipe.input_kind.startswith("pair"):
        inputs[1 if which == "audio" else 0].zero_()
    elif recipe.fusion_spec is not None and recipe.fusion_spec.ablate is not None:
        recipe.fusion_spec.ablate(inputs[0], [] if recipe.fuse_on_device else raw[1:], which)  # the stored ablation_arrays
    else:
        raise ValueError(f"fusion '{recipe.fusion}' mixes the modalities into one value per pixel; it cannot be ablated")
    return inputs
