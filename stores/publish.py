"""Publish a finished store: copy it elsewhere (local or remote), check it on arrival, show it only when whole.

A lab extracts into a scratch store, then publishes it where everyone reads it. Consumers must never open a
half-copied store, so the copy becomes visible in one step:

* Local destination: everything is written into a hidden sibling folder `.NAME.publishing-PID`, verified
  against the checksums, made read-only (chmod a-w), then renamed to NAME. A rename within one folder is
  atomic: a reader sees no store, or the whole one.
* Object storage has no rename (a "move" copies every object). There the root `zarr.json` is uploaded last,
  after every other object has been uploaded and re-hashed: without its root `zarr.json` a prefix is not a
  Zarr group, so `zarr.open_group`, `info` and training all answer "no store here" until that final PUT. A
  separate "complete" marker would work for avstore but not for plain-zarr readers (the README example),
  while the root metadata is the one marker every Zarr reader already respects. On S3 the final PUT is a
  conditional create (as is every other PUT), so two publishers racing to the same destination never mix.

Who may write a published bucket is the bucket policy's business (an admin's), so nothing is changed there;
published local folders are made read-only so that a stray `extract --store` is refused.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from stores.integrity import CHECKSUMS, Damage, has_checksums, read_checksums, verify
from stores.location import Location, locate
from stores.lock import LOCK_NAME, lock_present
from stores.store import store_exists

ROOT_META = "zarr.json"
UPLOAD_BATCH_BYTES = 256 << 20


class PublishError(ValueError):
    """Source not finished, destination taken, or the copy did not arrive intact; the message says what to do."""


@dataclass
class Published:
    files: int
    bytes: int
    dest: str


def check_finished(src: Location) -> None:
    """A finished store: openable, no writer lock, checksums written at commit, and every file matching them."""
    if not store_exists(src):
        raise PublishError(f"no avstore store at '{src.url}'; check --store")
    if lock_present(src):
        raise PublishError(
            f"'{src.url}' holds a writer lock ({src.url_of(LOCK_NAME)}): an extract is running or was killed; "
            "let it finish (or re-run extract to completion) before publishing"
        )
    if not has_checksums(src):
        raise PublishError(f"'{src.url}' has no {CHECKSUMS}: no extract run has finished on it; run extract to completion first")
    damage = verify(src)
    if damage:
        raise PublishError(f"'{src.url}' fails verify ({len(damage)} file(s), first: {damage[0]}); run `python cli.py verify --store {src.url}` and re-extract")


def publish(src: str | Path | Location, dest: str | Path | Location) -> Published:
    src, dest = locate(src), locate(dest)
    if dest.exists():
        raise PublishError(f"'{dest.url}' already exists; publish to a new --to (or delete that one first)")
    check_finished(src)
    listed = read_checksums(src)
    rels = sorted(listed) + [CHECKSUMS]
    if dest.is_local:
        _publish_local(src, dest, rels)
    else:
        _publish_remote(src, dest, rels)
    return Published(files=len(rels), bytes=sum(v["size"] for v in listed.values()), dest=dest.url)


def publish_and_report(store: str, to: str) -> None:
    """`cli.py publish`: publish `store` to `to` and say what arrived; a failed copy is one line naming both places."""
    try:
        done = publish(store, to)
    except OSError as err:
        raise PublishError(f"publishing '{store}' to '{to}' failed ({type(err).__name__}: {err}); check both locations and the credentials") from err
    print(f"published {store} -> {done.dest}: {done.files} files, {done.bytes / 1e6:.1f} MB, checksums verified on arrival")


# ---- local destination: hidden sibling, verify, chmod a-w, rename ----------------------------------------------
def _publish_local(src: Location, dest: Location, rels: list[str]) -> None:
    final = dest.local_path
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.publishing-{os.getpid()}")
    _remove_tree(tmp)
    try:
        if src.is_local:
            for rel in rels:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src.local_path / rel, tmp / rel)
        else:
            for rel, data in src.read_many(rels):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)
        _check_arrived(locate(tmp), dest.url)
        _make_read_only(tmp)
        if final.exists():
            raise PublishError(f"'{dest.url}' appeared while publishing (another publisher?); nothing was replaced")
        os.rename(tmp, final)
    except BaseException:
        _remove_tree(tmp)
        raise


def _make_read_only(root: Path) -> None:
    """chmod a-w on every file and folder: consumers read, nobody extracts into a published store by accident."""
    for path in [*root.rglob("*"), root]:
        path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)


def _remove_tree(root: Path) -> None:
    if not root.exists():
        return
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR)
    shutil.rmtree(root)


# ---- object storage: everything else first, verify, root zarr.json last ------------------------------------------
def _publish_remote(src: Location, dest: Location, rels: list[str]) -> None:
    """On S3 every PUT is a conditional create: a second publisher racing to the same destination fails at its
    first object that already exists instead of overwriting the first one's (neither mixes into the other)."""
    create = {"mode": "create"} if dest.protocol in ("s3", "s3a") else {}
    body = [rel for rel in rels if rel != ROOT_META]
    try:
        pending: dict[str, bytes] = {}
        for rel, data in src.read_many(body):
            pending[dest.path(rel)] = data
            if sum(len(v) for v in pending.values()) >= UPLOAD_BATCH_BYTES or len(pending) >= 256:
                dest.fs.pipe(pending, **create)
                pending = {}
        if pending:
            dest.fs.pipe(pending, **create)
        _check_arrived(dest, dest.url, but_not={ROOT_META})
        root_meta = src.read_bytes(ROOT_META)
        dest.fs.pipe_file(dest.path(ROOT_META), root_meta, **create)
    except FileExistsError:
        raise PublishError(
            f"'{dest.url}' is being published by someone else at the same time; nothing of theirs was replaced "
            "(this run's objects may remain there: delete the prefix and publish again if neither finished)"
        ) from None
    except BaseException:
        _remove_uploaded(dest, body)
        raise
    if dest.read_bytes(ROOT_META) != root_meta:
        raise PublishError(f"'{dest.url}/{ROOT_META}' did not arrive intact; delete '{dest.url}' and publish again")


def _remove_uploaded(dest: Location, rels: list[str]) -> None:
    """Best effort: without its root zarr.json the partial upload was never visible, but it takes space."""
    try:
        dest.fs.rm([dest.path(rel) for rel in rels])
    except OSError:
        pass


def _check_arrived(copy: Location, shown_as: str, but_not: frozenset[str] | set[str] = frozenset()) -> None:
    damage: list[Damage] = [d for d in verify(copy) if d.path not in but_not]
    if damage:
        raise PublishError(f"the copy at '{shown_as}' does not match the source's checksums ({damage[0]}); nothing was published, try again")
