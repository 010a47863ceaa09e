"""A run's per-clip test predictions (`predictions.json` in the run folder), with what a reviewer slices by.

A test-set accuracy is one number; a reviewer asks which clips it came from and how it varies with the
speaker. So a trainer writes, for every test clip, its id, speaker, sentence, intensity and speaker sex (from
the store's clip table; sex is in `extra_json` for CREMA-D and empty where a corpus has none), the true label
and the prediction. `encoders.significance` reads them to check that two compared runs saw the same clips and
to bootstrap confidence intervals over speakers; `encoders.report` reads them for the per-intensity,
per-sex and per-sentence tables. Columns, not rows: CREMA-D's 1,500 test clips stay a ~100 kB file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stores.store import FeatureStore

PREDICTIONS_FILE = "predictions.json"
FIELDS = ("clip_id", "speaker", "sentence", "intensity", "sex")
"""Per-clip columns beside `label` and `predicted`."""


def save(out: Path, location: str, rows: np.ndarray, predicted: Sequence[int], *, split: str = "test") -> Path:
    """Write `predicted` (one class index per store row of `rows`, in that order) with the clips' fields."""
    store = FeatureStore.open(location)
    table = store.clip_table()
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) != len(predicted):
        raise ValueError(f"{len(predicted)} predictions for {len(rows)} clips")
    extra = [json.loads(text) if text else {} for text in table["extra_json"][rows]]
    record: dict[str, Any] = {
        "split": split,
        "dataset": store.info.get("dataset"),
        "class_names": store.class_names,
        "clip_id": [str(c) for c in table["clip_id"][rows]],
        "speaker": [str(s) for s in table["speaker"][rows]],
        "sentence": [str(s) for s in table["sentence"][rows]],
        "intensity": [str(s) for s in table["intensity"][rows]],
        "sex": [str(e.get("sex", "")) for e in extra],
        "label": [int(x) for x in table["label"][rows]],
        "predicted": [int(x) for x in predicted],
    }
    path = Path(out) / PREDICTIONS_FILE
    path.write_text(json.dumps(record))
    return path


def load(run_dir: Path) -> dict[str, Any] | None:
    """A run folder's predictions, or None for a run made before they were written (or unreadable)."""
    path = Path(run_dir) / PREDICTIONS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def of_run(run: dict[str, Any]) -> dict[str, Any] | None:
    """The predictions beside a run's metrics.json (`run["path"]`, as encoders.report.collect_runs gives it)."""
    return load(Path(run.get("path", "")).parent) if run.get("path") else None
