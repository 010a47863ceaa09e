"""A plain description of a store, for `cli.py info` (text or JSON)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from stores.diff import describe_environment
from stores.location import locate, reading, store_or_default
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


def print_info(store: str | None, as_json: bool = False) -> None:
    """`cli.py info`: what `store` (default: the default store) holds, as text or JSON."""
    store = store_or_default(store)
    with reading(f"store '{store}'"):
        description = describe_store(FeatureStore.open(store))
    if as_json:
        print(json.dumps(description, indent=2, default=str))
        return
    print(f"store {store}: dataset {description['dataset']}, {description['clips']} clips, {description['bytes'] / 1e6:.1f} MB")
    print("splits: " + ", ".join(f"{k} {v}" for k, v in description["splits"].items()))
    for fs in description["feature_sets"]:
        print(f"\n{fs['name']}  (fingerprint {fs['fingerprint']}, made by {fs.get('made_by', '?')} at {fs.get('made_at', '?')})")
        print("  status: " + ", ".join(f"{k} {v}" for k, v in fs["status"].items()))
        print("  params: " + json.dumps(fs["params"], sort_keys=True))
        for env in fs["numeric"]:
            print(f"  computed on: {describe_environment(env)}")
        for name, a in fs["arrays"].items():
            print(f"  {name:14s} {str(tuple(a['shape'])):28s} {a['dtype']}")
