"""Whether a store is finished: the one question a trainer must ask before it reads a single row.

Rows are committed one by one (`done` is set last), so a store being written, or left by an interrupted
extract, is readable and looks like a small finished one: training on it silently used the clips that
happened to be committed (160 of 288, 7/2/2 of 12 speakers). A store is *finished* when

- no writer lock is in it (stores/lock.py: an extract, embed or fusion derivation is running, or was killed),
- no `UNFINISHED` marker is in it: the writer sets it before its first write and removes it only after the
  checksum list of its commit is written, so a run stopped any other way (Ctrl-C, an exception) leaves it,
- the checksum list exists (written by every finished run: a store without one never finished), and
- the list names exactly the files present, with their sizes (a listing, no hashing): a run of an older avstore
  stopped after writing, or any writer that did not finish, left files the list does not describe.

Readers refuse anything else unless told `allow_partial`, and a run that is told records what it trained on.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from stores.integrity import CHECKSUMS, checksums_match_listing
from stores.location import Location, locate
from stores.lock import LOCK_NAME, holder_gone, lock_holder
from stores.store import FeatureStore, StoreError

UNFINISHED = ".avstore-unfinished"


class PartialStoreError(StoreError):
    """The store is being written or was never finished; the message says which and how to go on."""


@dataclass(frozen=True)
class StoreState:
    location: str
    problem: str | None  # None: finished; else what is wrong, in a few words
    fix: str = ""
    details: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.problem is None

    def message(self) -> str:
        """One line: the problem and the fix (check_finished adds the --allow-partial escape)."""
        return f"store '{self.location}' is not finished: {self.problem}; {self.fix}"


def store_state(location: str | Path | Location) -> StoreState:
    """What state the store is in (see the module docstring); reads two small files and one listing."""
    where = locate(location)
    url = where.url
    holder = lock_holder(where)
    if holder is not None:
        if holder_gone(holder):
            return StoreState(url, f"its writer (pid {holder.get('pid')}, since {holder.get('since')}) was killed mid-write",
                              "re-run that extract (or embed) to finish it", {"lock": holder})
        return StoreState(url, f"it is being written by pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}",
                          f"wait for that run to finish (or delete {where.url_of(LOCK_NAME)} if that process is gone)", {"lock": holder})
    if where.exists(UNFINISHED):
        marker = _read_json(where, UNFINISHED)
        return StoreState(url, f"an extract that started {marker.get('since', '?')} was interrupted before it finished",
                          "re-run the same extract command to finish it", {"marker": marker})
    if not where.exists(CHECKSUMS):
        return StoreState(url, f"no extract run has finished on it (no {CHECKSUMS})", "re-run the extract command to finish it")
    if not checksums_match_listing(where):
        return StoreState(url, f"its files changed since its last finished run ({CHECKSUMS} does not list them)",
                          "re-run the extract command to finish it (`python cli.py verify` shows what changed)")
    return StoreState(url, None)


def check_finished(location: str | Path | Location, *, allow_partial: bool = False) -> StoreState:
    """The store's state; PartialStoreError if it is not finished, unless `allow_partial`."""
    state = store_state(location)
    if not state.finished and not allow_partial:
        FeatureStore.open(str(locate(location).url))  # no store there at all: that message, not this one
        raise PartialStoreError(state.message() + ", or pass --allow-partial to train on the clips committed so far")
    return state


def partial_record(state: StoreState, store, clips_used: dict[str, int], speakers_used: dict[str, int]) -> dict | None:
    """What a run on an unfinished store used, against what the store holds (None for a finished store):
    metrics.json's `partial_store`, so no table mixes such a run with the others unnoticed."""
    if state.finished:
        return None
    table = store.clip_table()
    committed = 0
    for faces in store.feature_sets("faces"):
        for audio in store.feature_sets("audio"):
            committed = max(committed, int((faces.done() & audio.done()).sum()))
    return {
        "problem": state.problem,
        "clips_used": int(sum(clips_used.values())),
        "clips_committed": committed,
        "clips_in_store": len(table["clip_id"]),
        "speakers_used": int(sum(speakers_used.values())),
        "speakers_in_store": len(set(table["speaker"].tolist())),
    }


def describe_partial(record: dict) -> str:
    """The record as one log line."""
    return (f"store not finished ({record['problem']}); --allow-partial: trained on {record['clips_used']} of "
            f"{record['clips_in_store']} clips in the store ({record['clips_committed']} committed), "
            f"{record['speakers_used']} of {record['speakers_in_store']} speakers")


# ---- the writer's side ---------------------------------------------------------------------------------
def mark_unfinished(location: str | Path | Location) -> None:
    """Called by a writer holding the lock, before its first write: readers now know the store is in flux."""
    where = locate(location)
    where.write_bytes(UNFINISHED, json.dumps({"since": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid(),
                                              "host": socket.gethostname()}).encode())


def mark_finished(location: str | Path | Location) -> None:
    """Called after the run's checksum list is written: the store is whole again."""
    locate(location).remove(UNFINISHED)


def _read_json(where: Location, rel: str) -> dict:
    try:
        return json.loads(where.read_bytes(rel) or b"{}")
    except (OSError, ValueError):
        return {}

