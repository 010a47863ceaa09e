"""One writer per store: a lock file created only if absent, removed when the writer finishes.

Local folders use O_CREAT|O_EXCL, which the kernel makes exclusive. Object stores have no such call, but S3
has a conditional PUT (`If-None-Match: *`): the server creates the object only if no object has that key,
and answers 412 otherwise, so exactly one of two racing writers gets the lock. After the PUT the lock is read
back and its random token compared, which catches a server that ignores the condition. A stale lock is taken
over by deleting it with `If-Match: <etag>`, so a writer never removes a lock other than the one it judged.

A lock left by a process that died on this host (kill -9) is recognised as stale and taken over; a live
writer's lock, or one from another host (whose processes we cannot see), is refused with a message that says
who holds it and how to remove it if that process is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

from stores.location import Location, LocationError, locate

LOCK_NAME = ".avstore-writer.lock"


class StoreLockedError(RuntimeError):
    pass


class StoreReadOnlyError(StoreLockedError):
    """The lock could not be written because this user may not write the store."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterLock:
    def __init__(self, store: str | Path | Location):
        self.location = locate(store)
        self.path = self.location.path(LOCK_NAME)
        self.held = False
        self.took_over = False  # a dead writer's lock was taken over: what it wrote is unknown

    @property
    def where(self) -> str:
        return self.location.url_of(LOCK_NAME)

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "token": uuid.uuid4().hex}
        for _ in range(2):
            try:
                self._create(json.dumps(me).encode())
            except FileExistsError:
                holder, etag = self._holder()
                if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                    self._remove(etag)  # stale: its writer is gone
                    self.took_over = True
                    continue
                raise StoreLockedError(
                    f"store '{self.location.url}' is being written by pid {holder.get('pid')} on {holder.get('host')} "
                    f"since {holder.get('since')}; wait for it to finish (or delete {self.where} if that process is gone)"
                ) from None
            except PermissionError:
                raise StoreReadOnlyError(
                    f"store '{self.location.url}' is read-only for this user (cannot create {self.where}); "
                    "extract into a writable --store (consumers can still read this one)"
                ) from None
            self.held = True
            return
        raise StoreLockedError(f"could not take the writer lock {self.where}; another writer is starting, try again")

    # ---- the two backends ----------------------------------------------------------------------------------
    def _create(self, data: bytes) -> None:
        if self.location.is_local:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return
        if self.location.protocol not in ("s3", "s3a"):
            raise LocationError(f"no exclusive create on {self.location.protocol}://; cannot lock '{self.location.url}' for writing")
        self.location.fs.pipe_file(self.path, data, mode="create")
        holder, _ = self._holder()
        if holder.get("token") != json.loads(data)["token"]:  # the server ignored If-None-Match and another writer won
            raise StoreLockedError(
                f"store '{self.location.url}' was locked by pid {holder.get('pid')} on {holder.get('host')} at the same moment; "
                "this object store may not honour conditional writes (If-None-Match), so run one writer at a time"
            )

    def _holder(self) -> tuple[dict, str | None]:
        """The lock's content and, remotely, its ETag ({} and None if unreadable or gone)."""
        try:
            if self.location.is_local:
                return json.loads(Path(self.path).read_text() or "{}"), None
            self.location.fs.invalidate_cache(self.path)
            etag = self.location.fs.info(self.path).get("ETag")
            return json.loads(self.location.fs.cat_file(self.path) or b"{}"), etag
        except (OSError, ValueError):
            return {}, None

    def _remove(self, etag: str | None) -> None:
        """Delete the lock; remotely only if it is still the object we read (`etag`), when one is given."""
        if self.location.is_local:
            Path(self.path).unlink(missing_ok=True)
            return
        bucket, _, key = self.path.partition("/")
        try:
            kwargs = {"IfMatch": etag} if etag else {}
            self.location.fs.call_s3("delete_object", Bucket=bucket, Key=key, **kwargs)
        except (FileNotFoundError, OSError):
            pass  # already gone, or replaced since we read it (412): the next create attempt decides
        self.location.fs.invalidate_cache(self.path)

    def release(self) -> None:
        """Unconditional: while we live nobody takes our lock over (other hosts never do, this host sees our pid)."""
        if self.held:
            self._remove(None)
            self.held = False

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_present(store: str | Path | Location) -> bool:
    """Whether a writer lock (live or stale) sits in the store: such a store is not a finished one."""
    return locate(store).exists(LOCK_NAME)


def holder_gone(holder: dict) -> bool:
    """Whether the lock's writer is known to be dead: a process of this host that no longer exists."""
    return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1)))


def lock_holder(store: str | Path | Location) -> dict | None:
    """Who holds the store's writer lock (pid, host, since), {} if unreadable; None when no lock is there."""
    lock = WriterLock(store)
    if not lock.location.exists(LOCK_NAME):
        return None
    return lock._holder()[0]
