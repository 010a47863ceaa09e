"""A plain description of a store, for `cli.py info` (text or JSON)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from stores.location import locate
from stores.store import FeatureStore


def describe_store(store: FeatureStore) -> dict:
    table = store.clip_table()
    sets = []
    for fs in store.feature_sets():
        status = np.where(fs.done(), fs.status(), "pending")
        sets.append({
            "name": fs.name,
            "kind": fs.kind,
            "fingerprint": fs.fingerprint,
            "params": fs.params,
            "made_by": fs.group.attrs.get("made_by"),
            "made_at": fs.group.attrs.get("made_at"),
            "avstore_commit": fs.group.attrs.get("avstore_commit"),
            "versions": fs.group.attrs.get("versions"),
            "numeric": fs.numeric_environments,
            "status": dict(sorted(Counter(status.tolist()).items())),
            "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in sorted(fs.group.arrays())},
        })
    return {
        **store.info,
        "clips": len(store),
        "splits": dict(sorted(Counter(table["split"].tolist()).items())),
        "bytes": store_bytes(store.location),
        "feature_sets": sets,
    }


def store_bytes(location: str) -> int:
    """Bytes of every file (or object) of the store, wherever it lives."""
    return sum(locate(location).files().values())
