"""Where a store lives: a local folder or an fsspec URL (s3://, gs://, file://), resolved in one place.

Everything that touches a store's files (Zarr, the writer lock, checksums, publish, diff) asks this module
for the filesystem and the root path, so local and remote stores go through the same code and a new URL
scheme needs changes here only.

Credentials and endpoints come from each backend's own standard configuration, never from avstore: for
S3, botocore reads AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (a MinIO, Ceph or moto server), AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws/config; for gs://, gcsfs reads
GOOGLE_APPLICATION_CREDENTIALS. So the same `--store s3://lab/crema-d.zarr` works on a laptop and on a
cluster node once the environment is set.

Local paths (and file:// URLs) keep Zarr's LocalStore, exactly as before remote stores existed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import fsspec
from fsspec.core import url_to_fs
from fsspec.utils import get_protocol

EXCLUSIVE_CREATE = {"s3", "s3a"}
"""Remote protocols whose "create only if absent" write is known to be honoured (S3's `If-None-Match: *`,
checked against moto and documented by AWS since 2024). The writer lock needs it, so extract writes only to
local paths and these; other protocols can still be read and published to."""

WRITER_FILES = {".avstore-writer.lock", ".avstore-unfinished"}
"""What a writer puts in a store before anything else (stores/lock.py, stores/state.py): a folder holding one is avstore's."""

READ_BATCH_BYTES = 256 << 20
"""Remote files are fetched concurrently in batches of about this many bytes (hashing, diff, publish)."""


def local_stamp(info: os.stat_result) -> str:
    """A local file's stamp: its inode and modification time in ns. Every write of a file through
    `write_bytes` or zarr (a temporary file renamed over it) gives it a new inode, and any write in place a
    new modification time."""
    return f"{info.st_ino}:{info.st_mtime_ns}"


def remote_stamp(info: dict) -> str:
    """An object's stamp: its ETag (the MD5 of its bytes for a single PUT; any rewrite with other bytes
    changes it), else its modification time."""
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or ""
    return etag.strip('"') or str(info.get("LastModified") or info.get("mtime") or info.get("updated") or "")


class LocationError(ValueError):
    """A --store string that cannot be used; the message names the problem and the fix."""


class UnreadableError(LocationError):
    """A store that exists but cannot be read (permissions, network); the message says what to check."""


@contextmanager
def reading(what: str) -> Iterator[None]:
    """Turn an OSError while reading `what` (e.g. "store 'x.zarr'") into UnreadableError: one line, not a traceback."""
    try:
        yield
    except OSError as err:
        raise UnreadableError(f"cannot read {what} ({type(err).__name__}: {err}); check the path or URL and the credentials (AWS_* variables)") from err


@dataclass(frozen=True)
class Location:
    url: str  # as the user wrote it, for messages
    fs: fsspec.AbstractFileSystem
    root: str  # the store's root inside `fs`: no protocol, no trailing slash

    # ---- what kind of place ---------------------------------------------------------------------------
    @property
    def protocol(self) -> str:
        protocol = self.fs.protocol
        return protocol[0] if isinstance(protocol, (tuple, list)) else protocol

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    @property
    def local_path(self) -> Path:
        assert self.is_local, self.url
        return Path(self.root)

    def path(self, rel: str = "") -> str:
        """The filesystem path of `rel` (a '/'-separated path inside the store)."""
        return f"{self.root}/{rel}" if rel else self.root

    def url_of(self, rel: str = "") -> str:
        """What a user would type for `rel`: a local path, or a URL with the protocol."""
        return self.path(rel) if self.is_local else self.fs.unstrip_protocol(self.path(rel))

    # ---- Zarr ---------------------------------------------------------------------------------------------
    def zarr_store(self, *, read_only: bool):
        """The Zarr store object: LocalStore for local folders, FsspecStore (async fsspec) for URLs.

        Listings are not cached: a reader that lists a store's feature sets while a writer adds one (or polls
        a store being written) must see the bucket as it is, not as it was at its first look."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.root, read_only=read_only)
        return FsspecStore.from_url(self.url_of(), read_only=read_only, storage_options={"use_listings_cache": False})

    # ---- files ------------------------------------------------------------------------------------------
    def files(self) -> dict[str, int]:
        """Every file under the root (relative '/'-path -> size), fresh from the backend (no listing cache)."""
        return {rel: size for rel, (size, _) in self.listing().items()}

    def listing(self) -> dict[str, tuple[int, str]]:
        """Every file under the root: relative '/'-path -> (size, stamp), fresh from the backend.

        The stamp changes whenever the file is written (`stamp_of`), so a checksum taken with a stamp still
        describes the file while the stamp is the same: nothing needs hashing again to know that."""
        if self.is_local:
            base = self.local_path
            if not base.is_dir():
                return {}
            out = {}
            for p in sorted(base.rglob("*")):
                info = p.stat()
                if stat.S_ISREG(info.st_mode):
                    out[p.relative_to(base).as_posix()] = (info.st_size, local_stamp(info))
            return out
        self.fs.invalidate_cache(self.root)
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.root + "/"
        return {p[len(prefix):]: (int(i.get("size") or 0), remote_stamp(i)) for p, i in sorted(found.items())
                if p.startswith(prefix) and i.get("type") == "file"}

    def exists(self, rel: str = "") -> bool:
        """Whether `rel` is a file here, or (rel="") whether anything at all is at the root."""
        if not rel:
            return self.local_path.exists() if self.is_local else bool(self.files())
        if self.is_local:
            return (self.local_path / rel).is_file()
        self.fs.invalidate_cache(self.path(rel))
        return self.fs.isfile(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write one file so that readers see the old content or the new, never a part: a local rename of a
        temporary file of its own (two writers of one file never share one), or a single object PUT (atomic
        on object stores). Returns the file's stamp (`listing`)."""
        if self.is_local:
            target = self.local_path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex[:12]}.partial")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return local_stamp(target.stat())
        response = self.fs.pipe_file(self.path(rel), data)
        if isinstance(response, dict) and response.get("ETag"):
            return response["ETag"].strip('"')
        self.fs.invalidate_cache(self.path(rel))
        return remote_stamp(self.fs.info(self.path(rel)))

    def remove(self, rel: str) -> None:
        """Delete file `rel` if it is there."""
        if self.is_local:
            (self.local_path / rel).unlink(missing_ok=True)
        elif self.exists(rel):
            self.fs.rm_file(self.path(rel))
            self.fs.invalidate_cache(self.path(rel))

    def remove_folder(self, rel: str) -> None:
        """Delete folder `rel` and everything in it, if it is there."""
        if self.is_local:
            shutil.rmtree(self.local_path / rel, ignore_errors=True)
            return
        self.fs.invalidate_cache(self.path(rel))
        try:
            self.fs.rm(self.path(rel), recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(self.path(rel))

    def read_many(self, rels: list[str]) -> Iterator[tuple[str, bytes]]:
        """(rel, content) for each file; remote files are fetched concurrently, a batch at a time."""
        if self.is_local:
            for rel in rels:
                yield rel, (self.local_path / rel).read_bytes()
            return
        sizes = self.files()
        batch: list[str] = []
        batch_bytes = 0
        for i, rel in enumerate(rels):
            batch.append(rel)
            batch_bytes += sizes.get(rel, 0)
            if i == len(rels) - 1 or batch_bytes >= READ_BATCH_BYTES or len(batch) >= 256:
                contents = self.fs.cat([self.path(r) for r in batch])
                for r in batch:
                    yield r, contents[self.path(r)]
                batch, batch_bytes = [], 0

    # ---- before writing ---------------------------------------------------------------------------------
    def check_store_target(self) -> None:
        """Refuse, before anything is written, a place that holds something other than a store: a plain file,
        or a folder with other files and no avstore store (extract wrote its store in among them)."""
        if self.is_local:
            path = self.local_path
            if path.exists() and not path.is_dir():
                raise LocationError(f"--store '{self.url}' is a file, not a store folder; give a new folder (e.g. data/stores/x.zarr) or an existing store")
            names = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        else:
            if self.fs.isfile(self.root):
                raise LocationError(f"--store '{self.url}' is an object, not a store prefix; give a new prefix or an existing store")
            self.fs.invalidate_cache(self.root)
            try:
                names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False))
            except FileNotFoundError:
                names = []
        if not names or set(names) & WRITER_FILES:
            return  # new, or ours (a writer's lock or marker: an interrupted extract, maybe before its zarr.json)
        if "zarr.json" not in names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise LocationError(f"--store '{self.url}' is a folder that holds other files ({shown}), not an avstore store; "
                                "give a new folder (e.g. data/stores/x.zarr) or an existing store")
        try:
            attributes = json.loads(self.read_bytes("zarr.json")).get("attributes", {})
        except (OSError, ValueError):
            attributes = {}
        if "avstore" not in attributes:
            raise LocationError(f"--store '{self.url}' is a Zarr store but not avstore's (no 'avstore' attribute); give a new folder or an avstore store")

    def prepare_for_writing(self) -> None:
        """Make the root exist (local) or check it can take a writer (remote); raise LocationError if not."""
        self.check_store_target()
        if self.is_local:
            self.local_path.mkdir(parents=True, exist_ok=True)
            return
        if self.protocol not in EXCLUSIVE_CREATE:
            raise LocationError(
                f"cannot write a store at '{self.url}': avstore's writer lock needs an exclusive create, known to work on "
                f"local paths and s3:// only; extract locally, then `python cli.py publish --to {self.url}`"
            )
        bucket = self.root.split("/")[0]
        if not self.fs.exists(bucket):
            raise LocationError(
                f"bucket '{bucket}' does not exist (endpoint {os.environ.get('AWS_ENDPOINT_URL_S3') or os.environ.get('AWS_ENDPOINT_URL') or 'AWS'}); "
                f"create it first (aws s3 mb s3://{bucket}) or fix --store / AWS_ENDPOINT_URL"
            )


DEFAULT_STORE_DIR = "data/stores"
OLD_DEFAULT_STORE_DIR = "stores"
"""Where stores went without --store before: inside the `stores` Python package, so `rm -rf stores/*` deleted code."""


def default_store(dataset: str) -> tuple[str, str | None]:
    """The store used when no --store is given, and a note when it is the old default location (still read and
    resumed there, so an existing store is never silently replaced by an empty new one)."""
    new, old = f"{DEFAULT_STORE_DIR}/{dataset}.zarr", f"{OLD_DEFAULT_STORE_DIR}/{dataset}.zarr"
    if not Path(new).exists() and Path(old).is_dir():
        return old, (f"note: using {old}, the old default store location (the default is now {new}); "
                     f"to move it: mkdir -p {DEFAULT_STORE_DIR} && mv {old} {new}")
    return new, None


def store_or_default(store: str | None, dataset: str = "crema-d") -> str:
    """--store as given, else the default store of `dataset` (default_store; its note, if any, said on stderr)."""
    if store:
        return store
    store, note = default_store(dataset)
    if note:
        print(note, file=sys.stderr)
    return store


def locate(store: str | Path | Location) -> Location:
    """Turn a --store value (path or URL) into a Location; LocationError when its scheme can't be used."""
    if isinstance(store, Location):
        return store
    url = str(store)
    if not url:
        raise LocationError("empty --store; give a folder (data/stores/x.zarr) or a URL (s3://bucket/x.zarr)")
    try:
        fs, root = url_to_fs(url)
    except ImportError as err:
        raise LocationError(f"'{url}' needs the fsspec backend for {get_protocol(url)}:// ({err}); it is not installed in .venv") from None
    except ValueError as err:
        raise LocationError(f"cannot use '{url}' as a store ({err}); give a local path or an s3://, gs:// or file:// URL") from None
    root = root.rstrip("/") or root
    return Location(url=url, fs=fs, root=root)


def local_store_writable(store: str | Path | Location) -> bool:
    """Whether this user may write the local store location `store` (False for URLs: see check_writable).

    A local folder with no write bit at all (a published store, chmod a-w) counts as read-only even for
    root, who could write it anyway."""
    where = locate(store)
    if not where.is_local:
        return False
    path = where.local_path
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    return os.access(probe, os.W_OK) and not (path.exists() and not path.stat().st_mode & 0o222)


def check_writable(store: str | Path | Location) -> None:
    """Refuse (LocationError), before anything is written, a store location this user cannot write.

    A remote store's permissions are only known by trying: the writer lock, the first thing extract writes,
    turns a denied PUT into the same one-line refusal."""
    if locate(store).is_local and not local_store_writable(store):
        raise LocationError(f"store '{store}' is read-only for this user; extract into a writable --store (consumers can still read this one)")
