"""The report's "Perceived emotion" section: every run scored against all four targets, side by side.

Runs are grouped like the main table's cells, by encoder, modality and fusion plus every configuration field
that varies among them, and always by what they were trained on (`target`, `labels`): a hard-label run and a
soft-label run, or an intended and a perceived run, are separate rows, never averaged together. Each cell is
the mean (± sample sd over replicates, n beside it) of the runs' test scores from `metrics.json["targets"]`
(encoders/targets.py). Runs made before targets were recorded count as `intended`, `hard`, and have no scores
against the perceived targets (they are listed in the main table only).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from encoders.metrics import mean_sd
from pipeline.records import VOTE_MODALITIES

TARGETS: tuple[str, ...] = ("intended", *(f"perceived-{m}" for m in VOTE_MODALITIES))
"""encoders/targets.py's, without importing torch (the report does not need it)."""

DEFAULTS = {"target": "intended", "labels": "hard"}
"""What a run made before --target existed trained on."""
IGNORED = frozenset({"encoder", "modality", "fusion", "seed", "fold", "device", "max_memory_gb", "loader_workers", "compile",
                     "fuse_on_device", "target", "labels"})
CSV_FIELDS = ("encoder", "modality", "fusion", "trained_on", "variant", "scored_against", "metric", "mean", "sd", "n")
SCORES = ("accuracy", "uar", "cross_entropy", "agreement")


def trained_on(run: dict[str, Any]) -> str:
    """'perceived-av (soft)': a run's target and label kind."""
    config = {**DEFAULTS, **(run.get("config") or {})}
    return f"{config['target']} ({config['labels']})"


def _variant(run: dict[str, Any], varying: Iterable[str]) -> str:
    config = run.get("config") or {}
    return ", ".join(f"{k}={config.get(k, '—')}" for k in sorted(varying))


def group_runs(runs: list[dict[str, Any]]) -> dict[tuple[str, ...], list[dict]]:
    """(encoder, modality, fusion, trained on, variant) -> runs that carry target scores; ablations excluded."""
    scored = [r for r in runs if r.get("targets") and r.get("ablate") in (None, "", False)]
    values: dict[str, set[str]] = defaultdict(set)
    for run in scored:
        for key, value in (run.get("config") or {}).items():
            if key not in IGNORED:
                values[key].add(str(value))
    varying = {k for k, v in values.items() if len(v) > 1}
    groups: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for run in scored:
        groups[(str(run["encoder"]), str(run["modality"]), str(run.get("fusion") or "none"), trained_on(run), _variant(run, varying))].append(run)
    return dict(sorted(groups.items()))


def _stat(runs: list[dict], target: str, metric: str) -> tuple[float | None, float | None, int]:
    values = [float(r["targets"]["test"][target][metric]) for r in runs
              if r["targets"]["test"].get(target, {}).get(metric) is not None]
    if not values:
        return None, None, 0
    mean, sd = mean_sd(values)
    return mean, sd, len(values)


def _cell(runs: list[dict], target: str, metric: str) -> str:
    mean, sd, n = _stat(runs, target, metric)
    if mean is None:
        return "—"
    return f"{mean:.2f}" if n < 2 else f"{mean:.2f} ± {sd:.2f}"


def perceived_markdown(runs: list[dict[str, Any]]) -> str:
    """The Markdown section ('' when no run carries target scores)."""
    groups = group_runs(runs)
    if not groups:
        return ""
    header = ["Encoder", "Modality", "Fusion", "Trained on", "n", *(f"vs {t}" for t in TARGETS), "soft CE (voice / face / av)",
              "1 − JSD (voice / face / av)"]
    lines = ["", "## Perceived emotion", "",
             "Test accuracy against each target (the intended emotion; the raters' majority per modality, ties broken by a "
             "seeded hash), mean ± sd over replicates; the soft-label cross-entropy to the raters' vote distribution and the "
             "distribution agreement (1 − Jensen–Shannon distance, base 2). Runs trained on different targets or label kinds "
             "are separate rows.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for (encoder, modality, fusion, trained, variant), members in groups.items():
        perceived = [t for t in TARGETS if t != "intended"]
        cells = [encoder, modality, fusion, trained + (f", {variant}" if variant else ""), str(len(members)),
                 *(_cell(members, t, "accuracy") for t in TARGETS),
                 " / ".join(_cell(members, t, "cross_entropy") for t in perceived),
                 " / ".join(_cell(members, t, "agreement") for t in perceived)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Accuracy against each perceived target by the raters' agreement on the clip (unanimous / majority / "
              "plurality / tie; n clips of the first run):", ""]
    for (encoder, modality, fusion, trained, variant), members in groups.items():
        first = members[0]["targets"]["test"]
        parts = []
        for target in TARGETS[1:]:
            levels = first.get(target, {}).get("by_agreement", {})
            shown = []
            for level, entry in levels.items():
                values = [r["targets"]["test"][target]["by_agreement"][level]["accuracy"] for r in members
                          if r["targets"]["test"].get(target, {}).get("by_agreement", {}).get(level, {}).get("accuracy") is not None]
                if values:
                    shown.append(f"{level} {sum(values) / len(values):.2f} (n={entry['n']})")
            if shown:
                parts.append(f"{target}: " + ", ".join(shown))
        if parts:
            lines.append(f"- {encoder} {modality} {fusion}, {trained}{', ' + variant if variant else ''}: " + "; ".join(parts))
    raters = _raters(groups)
    if raters:
        lines += ["", "The raters themselves on the same test clips, against the intended emotion (balanced: mean over "
                  "emotions of votes for the intended one / all votes; majority: the crowd's majority vote as one "
                  "classifier), beside the models' UAR and accuracy against the intended emotion:", ""]
        lines += raters
    return "\n".join(lines) + "\n"


def _raters(groups: dict[tuple[str, ...], list[dict]]) -> list[str]:
    lines = []
    for (encoder, modality, fusion, trained, variant), members in groups.items():
        raters = members[0]["targets"].get("raters") or {}
        shown = [f"{m} {100 * r['balanced']:.1f} % (majority {100 * r['majority']:.1f} %)" for m, r in raters.items() if r.get("clips")]
        if not shown:
            continue
        uar, _, _ = _stat(members, "intended", "uar")
        accuracy, _, _ = _stat(members, "intended", "accuracy")
        model = f"model UAR {100 * uar:.1f} %, accuracy {100 * accuracy:.1f} %" if uar is not None else "model —"
        lines.append(f"- {encoder} {modality} {fusion}, {trained}: raters " + "; ".join(shown) + f" | {model}")
    return lines


def write_targets_csv(runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Long format, one line per (group, target, score); None (nothing written) when no run carries target scores."""
    groups = group_runs(runs)
    if not groups:
        return None
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        for (encoder, modality, fusion, trained, variant), members in groups.items():
            for target in TARGETS:
                for metric in SCORES:
                    mean, sd, n = _stat(members, target, metric)
                    if mean is not None:
                        writer.writerow({"encoder": encoder, "modality": modality, "fusion": fusion, "trained_on": trained,
                                         "variant": variant, "scored_against": target, "metric": metric, "mean": mean, "sd": sd, "n": n})
    return Path(path)
