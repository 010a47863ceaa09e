"""Where a configuration's errors are: per emotion, by intensity, by speaker sex and by sentence, and its
confusion matrix over a group's runs. `encoders.report` writes one such section per table cell.

* Per-emotion recall and F1 come from each run's own test metrics (metrics.json `per_class`), as mean ± sd
  over the same replicates as the table: folds (each the mean of its seeds) for k-fold runs, seeds otherwise.
* The confusion matrix is the runs' test matrices summed: its Markdown shows the mean count per run, its PNG
  the row fractions (a recall per true class, pooled over the runs).
* By intensity, speaker sex and sentence: per-emotion recall and accuracy over the runs' pooled per-clip
  predictions (`predictions.json`), for the fields the store's clip table fills with two or more values (the
  sample corpus has no speaker sex; CREMA-D's comes from its demographics table). Runs made before
  predictions.json get a sentence saying so instead.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from encoders.metrics import mean_sd
from encoders.plots import plot_confusion, plot_per_class
from encoders.predictions import of_run as predictions_of

BY_FIELDS: dict[str, str] = {"intensity": "intensity", "sex": "speaker sex", "sentence": "sentence"}


def replicate_unit(runs: list[dict[str, Any]]) -> str:
    """'folds' when the runs are k-fold rounds (seeds averaged within each), else 'seeds'."""
    return "folds" if any(run.get("fold") not in (None, "") for run in runs) else "seeds"


def replicate_values(runs: list[dict[str, Any]], value) -> list[float]:
    """`value(run)` per replicate: the mean over each fold's seeds for k-fold runs, else one per run (None skipped)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for k, run in enumerate(runs):
        v = value(run)
        if v is not None:
            groups[str(run.get("fold")) if replicate_unit(runs) == "folds" else str(k)].append(float(v))
    return [float(np.mean(vs)) for vs in groups.values()]


def class_names_of(runs: list[dict[str, Any]]) -> list[str]:
    for run in runs:
        names = run.get("class_names") or run.get("test", {}).get("class_names")
        if names:
            return [str(n) for n in names]
    return []


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "runs"


def section(label: str, runs: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """Markdown lines of one group's section; writes per_class_<slug>.png and confusion_<slug>.png into out_dir."""
    names = class_names_of(runs)
    with_classes = [run for run in runs if isinstance(run.get("test", {}).get("per_class"), dict)]
    if not names or not with_classes:
        return []
    unit = replicate_unit(with_classes)
    lines = [f"### {label}", "", f"{len(with_classes)} run(s); mean ± sd over {unit}.", "",
             "| Emotion | Recall | F1 | Test clips per run |", "|---|---|---|---|"]
    recall, f1 = [], []
    for name in names:
        cell = lambda key: replicate_values(with_classes, lambda r: r["test"]["per_class"].get(name, {}).get(key))  # noqa: E731
        r_stats, f_stats = mean_sd(cell("recall") or [0.0]), mean_sd(cell("f1") or [0.0])
        recall.append(r_stats)
        f1.append(f_stats)
        support = np.mean([r["test"]["per_class"].get(name, {}).get("support", 0) for r in with_classes])
        lines.append(f"| {name} | {_pm(*r_stats)} | {_pm(*f_stats)} | {support:.1f} |")
    stem = slug(label)
    plot_per_class(names, recall, f1, out_dir / f"per_class_{stem}.png", title=f"{label}: test recall and F1 per class, mean ± sd over {unit}")
    lines += ["", f"![per class](per_class_{stem}.png)", ""]
    confusions = [np.asarray(r["test"]["confusion"]) for r in with_classes if r["test"].get("confusion") is not None]
    if confusions:
        total = np.sum(confusions, axis=0)
        mean = total / len(confusions)
        lines += [f"Confusion matrix, mean count per run over {len(confusions)} run(s) (rows true, columns predicted):", "",
                  "| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
                  *(f"| {name} | " + " | ".join(f"{x:.1f}" for x in row) + " |" for name, row in zip(names, mean))]
        plot_confusion(total, names, out_dir / f"confusion_{stem}.png", title=f"{label}: test, {len(confusions)} run(s) pooled")
        lines += ["", f"![confusion](confusion_{stem}.png)", ""]
    lines += _by_field(with_classes, names)
    return lines


def _by_field(runs: list[dict[str, Any]], names: list[str]) -> list[str]:
    predictions = [p for p in (predictions_of(run) for run in runs) if p is not None]
    if len(predictions) < len(runs):
        return [f"By intensity, speaker sex and sentence: {len(runs) - len(predictions)} of the {len(runs)} runs have no "
                "per-clip predictions (predictions.json; runs made before it was written), so these tables are left out.", ""]
    lines = []
    for field, title in BY_FIELDS.items():
        values = [v for p in predictions for v in p.get(field, [])]
        levels = sorted({v for v in values if v})
        if len(levels) < 2:
            lines += [f"By {title}: the store's clip table has {'no' if not levels else 'a single'} {title} value, no table.", ""]
            continue
        lines += [f"By {title} (per-clip predictions pooled over the {len(predictions)} runs; recall per emotion):", "",
                  f"| {title} | clips | accuracy | " + " | ".join(names) + " |", "|---" * (len(names) + 3) + "|"]
        for level in levels:
            true, pred = [], []
            for p in predictions:
                keep = np.asarray(p[field]) == level
                true.append(np.asarray(p["label"])[keep])
                pred.append(np.asarray(p["predicted"])[keep])
            t, q = np.concatenate(true), np.concatenate(pred)
            recalls = [f"{np.mean(q[t == k] == k):.2f}" if np.any(t == k) else "—" for k in range(len(names))]
            lines.append(f"| {level} | {len(t)} | {np.mean(t == q):.2f} | " + " | ".join(recalls) + " |")
        lines.append("")
    return lines


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.2f} ± {sd:.2f}"
