"""Sweep presets that reproduce a study's results table, and the table itself.

Goncalves & Busso (seed 002) report, per model, macro and micro precision, recall and F1, and mark where the
audiovisual ladder network beats a competitor by a one-tailed matched-pairs t-test over 20 runs (p < 0.05).
A preset names the configurations of such a table (the reference first), and the replicates that make its
runs (actor folds x seeds, `sweep --folds/--seeds` reduce them); `study_table` turns the finished runs into
the table. The tests come from `encoders.significance.compare_runs`, so a pair is the same (fold, seed) of
the reference and the other configuration, and runs without a partner are named, never paired across.

Why the ladder's rows are the ones they are: the poster's ablations remove the cross-modal skip connections
and the unsupervised (reconstruction) loss; the baseline is one model of the comparison study (seed 000/001)
trained on the same store, folds and seeds: ResNet18 on the face and spectrogram side by side (`concat`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoders.metrics import mean_sd
from encoders.report import random_init_notes
from encoders.significance import CompareError, compare_runs

__all__ = ["Arm", "Preset", "PRESETS", "StudyError", "get_preset", "study_table", "write_study"]

TABLE_METRICS: dict[str, str] = {
    "macro_precision": "Macro P", "macro_recall": "Macro R", "macro_f1": "Macro F1",
    "micro_precision": "Micro P", "micro_recall": "Micro R", "micro_f1": "Micro F1",
}
"""Seed 002's columns, in its order (metrics.json test keys -> headers)."""

ALPHA = 0.05
ARM_FIELD = "study_arm"  # the tag study_table gives each run, so compare_runs can select an arm exactly


class StudyError(ValueError):
    """A preset that does not exist; the message lists those that do."""


@dataclass(frozen=True)
class Arm:
    """One row of the table: a training configuration, named for the reader and for its run folders."""

    slug: str  # run folders: <slug>-seed<S>[-fold<K>of<N>]
    label: str
    encoder: str
    modality: str = "av"
    fusion: str | None = None  # None: the encoder's own default (a model that fuses itself takes none)
    options: tuple[tuple[str, Any], ...] = ()  # TrainConfig fields set for this arm only (the encoder's own: encoder_options)


@dataclass(frozen=True)
class Preset:
    """A study's table: the reference arm first, then what it is tested against, over folds x seeds."""

    name: str
    description: str
    arms: tuple[Arm, ...]
    folds: int = 5
    seeds: tuple[int, ...] = (0, 1, 2, 3)  # 5 folds x 4 seeds: the study's 20 runs per configuration
    metrics: tuple[str, ...] = tuple(TABLE_METRICS)

    @property
    def reference(self) -> Arm:
        return self.arms[0]


PRESETS: dict[str, Preset] = {
    "ladder-crema-d": Preset(
        name="ladder-crema-d",
        description="seed 002: the audiovisual ladder network against its two ablations and the comparison study's ResNet18 (av, concat)",
        arms=(
            Arm("ladder", "ladder", "ladder"),
            Arm("ladder-no-cross-skips", "ladder, no cross-modal skips", "ladder", options=(("encoder_options", {"cross_skips": False}),)),
            Arm("ladder-no-reconstruction", "ladder, no reconstruction loss", "ladder", options=(("encoder_options", {"reconstruction": False}),)),
            Arm("resnet18-av-concat", "resnet18, av concat (comparison study)", "resnet18", fusion="concat"),
        ),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise StudyError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class ArmResult:
    arm: Arm
    runs: list[dict[str, Any]]
    stats: dict[str, tuple[float | None, float | None, int]]  # metric -> (mean, sd, n)
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> compare_runs' as_dict, or {"error": ...}


def study_table(preset: Preset, runs_by_arm: dict[str, list[dict[str, Any]]]) -> list[ArmResult]:
    """Mean, sd and n per arm and metric, and the reference's one-tailed tests against every other arm.

    `runs_by_arm` maps an arm's slug to its runs' metrics.json dicts. A metric a run lacks (runs made before
    metrics.json had micro precision) is left out of that metric's n rather than guessed."""
    tagged = [{**run, ARM_FIELD: slug} for slug, runs in runs_by_arm.items() for run in runs]
    results = []
    for arm in preset.arms:
        runs = runs_by_arm.get(arm.slug, [])
        stats = {}
        for metric in preset.metrics:
            values = [float(run["test"][metric]) for run in runs if run.get("test", {}).get(metric) is not None]
            stats[metric] = (*mean_sd(values), len(values)) if values else (None, None, 0)
        result = ArmResult(arm, runs, stats)
        if arm is not preset.reference:
            for metric in preset.metrics:
                try:
                    result.tests[metric] = compare_runs(tagged, f"{ARM_FIELD}={preset.reference.slug}", f"{ARM_FIELD}={arm.slug}", metric).as_dict()
                except CompareError as err:
                    result.tests[metric] = {"error": str(err)}
        results.append(result)
    return results


def _mean_sd_text(mean: float | None, sd: float | None, n: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.3f} (n=1)" if n < 2 else f"{mean:.3f} ± {sd:.3f} (n={n})"


def _significant(test: dict[str, Any]) -> bool:
    return "error" not in test and test["t_test_p_one_tailed"] < ALPHA


def _cell(result: ArmResult, metric: str) -> str:
    text = _mean_sd_text(*result.stats[metric])
    test = result.tests.get(metric)
    if test is None:
        return text
    if "error" in test:
        return f"{text}<br>no test"
    return f"{text}{' *' if _significant(test) else ''}<br>p = {test['t_test_p_one_tailed']:.3g}"


def _markdown(preset: Preset, results: list[ArmResult]) -> str:
    ref = preset.reference
    header = ["Configuration", *(TABLE_METRICS[m] for m in preset.metrics)]
    lines = [
        f"# {preset.name}",
        "",
        f"{preset.description}. Test metrics of each configuration over its replicates (actor folds x seeds): "
        "mean ± sample sd (n). Under every other configuration's value: p of the one-tailed matched-pairs t-test "
        f"that **{ref.label}** is better, over the same (fold, seed) replicates; `*` marks p < {ALPHA:g}. "
        "Micro P = micro R = micro F1 = accuracy for single-label predictions. Wilcoxon signed-rank p-values are in the CSV.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for result in results:
        name = result.arm.label + (" (reference)" if result.arm is ref else "")
        lines.append("| " + " | ".join([name, *(_cell(result, m) for m in preset.metrics)]) + " |")
    notes = []
    for result in results[1:]:
        tests = [t for t in result.tests.values() if "error" not in t]
        if tests:
            pairs = ", ".join(f"fold {r['fold']} seed {r['seed']}" for r in tests[0]["replicates"])
            unmatched = [f"fold {r['fold']} seed {r['seed']}" for side in ("unmatched_a", "unmatched_b") for r in tests[0][side]]
            notes.append(f"- {ref.label} vs {result.arm.label}: {tests[0]['n_pairs']} matched replicates ({pairs})"
                         + (f"; left out, no partner: {', '.join(unmatched)}" if unmatched else "") + ".")
        errors = sorted({t["error"] for t in result.tests.values() if "error" in t})
        notes.extend(f"- {ref.label} vs {result.arm.label}: no test: {error}." for error in errors)
    notes.extend(random_init_notes([run for result in results for run in result.runs]))
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("configuration", "slug", "metric", "mean", "sd", "n", "n_pairs", "mean_difference", "t_statistic",
              "t_test_p_one_tailed", "wilcoxon_p_one_tailed", "significant")


def _csv(path: Path, preset: Preset, results: list[ArmResult]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        for result in results:
            for metric in preset.metrics:
                mean, sd, n = result.stats[metric]
                test = result.tests.get(metric, {})
                ok = bool(test) and "error" not in test
                writer.writerow({
                    "configuration": result.arm.label, "slug": result.arm.slug, "metric": metric, "mean": mean, "sd": sd, "n": n,
                    "n_pairs": test.get("n_pairs", "") if ok else "", "mean_difference": test.get("mean_difference", "") if ok else "",
                    "t_statistic": test.get("t_statistic", "") if ok else "",
                    "t_test_p_one_tailed": test.get("t_test_p_one_tailed", "") if ok else "",
                    "wilcoxon_p_one_tailed": test.get("wilcoxon_p_one_tailed", "") if ok else "",
                    "significant": _significant(test) if ok else "",
                })
    return path


def write_study(preset: Preset, runs_by_arm: dict[str, list[dict[str, Any]]], out_dir: Path) -> dict[str, Path]:
    """Write <preset>.md, .csv and .png into `out_dir`; returns {"markdown", "csv", "plot"} -> path."""
    from encoders.plots import plot_study

    results = study_table(preset, runs_by_arm)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / f"{preset.name}.md"
    markdown.write_text(_markdown(preset, results), encoding="utf-8")
    bars = [(r.arm.label, [r.stats[m][0] for m in preset.metrics], [r.stats[m][1] for m in preset.metrics],
             [_significant(r.tests[m]) if m in r.tests else False for m in preset.metrics]) for r in results]
    plot = plot_study(bars, [TABLE_METRICS[m] for m in preset.metrics], out_dir / f"{preset.name}.png",
                      title=f"{preset.name}: mean ± sd over replicates; * {preset.reference.label} better, p < {ALPHA:g}")
    return {"markdown": markdown, "csv": _csv(out_dir / f"{preset.name}.csv", preset, results), "plot": plot}


def stale_fields(planned: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """Fields of a planned run's configuration that a finished run in its folder was made with otherwise.

    Resuming must not mix, say, 1-epoch runs into a 20-epoch table. Fields the plan leaves to the encoder's
    default (None) and those that do not change the numbers (device, memory, progress) are not compared."""
    ignored = {"device", "max_memory_gb", "loader_workers", "progress", "out"}
    stale = []
    for key, value in planned.items():
        if key in ignored or value is None or key not in recorded:
            continue
        if json.loads(json.dumps(value)) != recorded[key]:  # tuples were written as lists
            stale.append(f"{key}={recorded[key]!r} (asked {value!r})")
    return stale
