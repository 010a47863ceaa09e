"""Fingerprints: a feature set is named by a hash of everything that changes its numbers, and nothing else.

Parameters go through a canonical JSON (sorted keys, no spaces, tuples as lists) so the same settings give
the same name on every machine. Worker counts, paths, devices and timings are left out on purpose: they
change how fast numbers are made, not which numbers. One exception: face embeddings (encoders/embed.py) name
the device kind and precision, because a backbone in bf16 on CUDA gives other numbers than in fp32 on a CPU,
and a resumed run must not mix the two in one feature set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


def canonical_json(params: Any) -> str:
    if dataclasses.is_dataclass(params):
        params = dataclasses.asdict(params)
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(params: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:length]
