"""Sweeps: encoders x modalities x folds x seeds in one command, and presets that reproduce a study's results
table, with the table itself.

Goncalves & Busso (seed 002) report, per model, macro and micro precision, recall and F1, and mark where the
audiovisual ladder network beats a competitor by a one-tailed matched-pairs t-test over 20 runs (p < 0.05).
That test treats the 5 folds x 4 seeds as 20 independent replicates; they are not (seeds share a test fold,
folds share training speakers), and micro P = R = F1 = accuracy repeats one test three times. So the table
here shows each metric once (accuracy stands for the micro scores), and each comparison with the reference
is `encoders.significance.compare_runs`: folds as replicates (seeds averaged within a fold), the corrected
resampled t-test, two-sided unless the preset states a direction, Holm-adjusted over every test of the
table, with a speaker-bootstrap 95 % interval of the difference. Folds without a partner are named.

Why the ladder's rows are the ones they are: the poster's ablations remove the cross-modal skip connections
and the unsupervised (reconstruction) loss; the baseline is one model of the comparison study (seed 000/001)
trained on the same store, folds and seeds: ResNet18 on the face and spectrogram side by side (`concat`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoders.metrics import mean_sd
from encoders.registry import get_spec, list_models
from encoders.report import collect_runs, print_written, random_init_notes, write_report
from encoders.runs import check_store, finished_metrics, print_metrics, run_name, run_training, train_config
from encoders.significance import CompareError, adjust, compare_runs
from encoders.train import TrainConfig
from pipeline.hardware import resolve_device
from stores.location import store_or_default

__all__ = ["Arm", "Preset", "PRESETS", "StudyError", "get_preset", "study_table", "write_study", "sweep", "run_plan"]

SWEEP_ENCODERS = ("resnet18", "simple3d")
SWEEP_MODALITIES = ("audio", "vision", "av")
SWEEP_SEEDS = (0, 1)
"""What `sweep` runs when it is given no --encoders, --modalities or --seeds (and no --preset)."""

TABLE_METRICS: dict[str, str] = {
    "macro_precision": "Macro P", "macro_recall": "Macro R", "macro_f1": "Macro F1", "accuracy": "Accuracy (= micro P, R, F1)",
}
"""Seed 002's columns, each once (metrics.json test keys -> headers): its micro P, R and F1 all equal accuracy."""

ALPHA = 0.05
VERBS = {"two-sided": "differs from", "greater": "is better than", "less": "is worse than"}
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
    seeds: tuple[int, ...] = (0, 1, 2, 3)  # 5 folds x 4 seeds: the study's 20 runs per configuration (5 replicates)
    metrics: tuple[str, ...] = tuple(TABLE_METRICS)
    alternative: str = "two-sided"  # "greater" only for a direction stated before the runs were seen

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
    """Mean, sd and n per arm and metric, and the reference's tests against every other arm, Holm-adjusted together.

    `runs_by_arm` maps an arm's slug to its runs' metrics.json dicts. The mean and sd are over folds (seeds averaged
    within a fold first); n counts folds. A metric a run lacks is left out of that metric's n rather than guessed."""
    tagged = [{**run, ARM_FIELD: slug} for slug, runs in runs_by_arm.items() for run in runs]
    results, family = [], []
    for arm in preset.arms:
        runs = runs_by_arm.get(arm.slug, [])
        stats = {}
        for metric in preset.metrics:
            values = fold_means(runs, metric)
            stats[metric] = (*mean_sd(values), len(values)) if values else (None, None, 0)
        result = ArmResult(arm, runs, stats)
        if arm is not preset.reference:
            for metric in preset.metrics:
                try:
                    comparison = compare_runs(tagged, f"{ARM_FIELD}={preset.reference.slug}", f"{ARM_FIELD}={arm.slug}", metric, preset.alternative)
                    family.append(comparison)
                    result.tests[metric] = comparison  # type: ignore[assignment]
                except CompareError as err:
                    result.tests[metric] = {"error": str(err)}
        results.append(result)
    adjust(family)
    for result in results:
        result.tests = {m: t.as_dict() if not isinstance(t, dict) else t for m, t in result.tests.items()}
    return results


def fold_means(runs: list[dict[str, Any]], metric: str) -> list[float]:
    """One value per fold: the mean of that fold's seeds (runs without a fold form one group: one value)."""
    by_fold: dict[str, list[float]] = {}
    for run in runs:
        value = run.get("test", {}).get(metric)
        if value is not None:
            by_fold.setdefault(str(run.get("fold")), []).append(float(value))
    return [sum(v) / len(v) for v in by_fold.values()]


def _mean_sd_text(mean: float | None, sd: float | None, n: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.3f} (n=1)" if n < 2 else f"{mean:.3f} ± {sd:.3f} (n={n})"


def _significant(test: dict[str, Any]) -> bool:
    return "error" not in test and test["p_holm"] < ALPHA


def _cell(result: ArmResult, metric: str) -> str:
    text = _mean_sd_text(*result.stats[metric])
    test = result.tests.get(metric)
    if test is None:
        return text
    if "error" in test:
        return f"{text}<br>no test"
    ci = f"<br>Δ {test['mean_difference']:+.3f} [{test['ci95'][0]:+.3f}, {test['ci95'][1]:+.3f}]" if test.get("ci95") else ""
    return f"{text}{' *' if _significant(test) else ''}<br>p = {test['p']:.3g}, Holm {test['p_holm']:.3g}{ci}"


def _markdown(preset: Preset, results: list[ArmResult]) -> str:
    ref = preset.reference
    header = ["Configuration", *(TABLE_METRICS[m] for m in preset.metrics)]
    family = sum("error" not in t for r in results for t in r.tests.values())
    lines = [
        f"# {preset.name}",
        "",
        f"{preset.description}. Test metrics of each configuration: mean ± sample sd over actor folds, each fold the mean "
        "of its seeds (n = folds). Under every other configuration's value: p of the corrected resampled t-test "
        f"(Nadeau & Bengio 2003; folds as replicates, H1: **{ref.label}** {VERBS[preset.alternative]} "
        f"it, {preset.alternative}), the same p Holm-adjusted over the table's {family} tests, and Δ = reference − this "
        f"configuration with its 95 % speaker-bootstrap interval; `*` marks Holm p < {ALPHA:g}. "
        "Micro P, R and F1 equal accuracy for single-label predictions, so they are one column.",
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
            folds = ", ".join(f["fold"] for f in tests[0]["folds"])
            unmatched = tests[0]["unmatched_a"] + tests[0]["unmatched_b"]
            notes.append(f"- {ref.label} vs {result.arm.label}: {tests[0]['n_folds']} matched folds ({folds})"
                         + (f"; left out, no partner: fold {', '.join(unmatched)}" if unmatched else "") + ".")
            notes.extend(f"- {ref.label} vs {result.arm.label}: {note}" for note in dict.fromkeys(n for t in tests for n in t["notes"]))
        errors = sorted({t["error"] for t in result.tests.values() if "error" in t})
        notes.extend(f"- {ref.label} vs {result.arm.label}: no test: {error}." for error in errors)
    notes.extend(random_init_notes([run for result in results for run in result.runs]))
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("configuration", "slug", "metric", "mean", "sd", "n", "n_folds", "mean_difference", "ci95_low", "ci95_high",
              "t_statistic", "df", "p", "p_holm", "p_naive_paired", "alternative", "significant")


def _csv(path: Path, preset: Preset, results: list[ArmResult]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        for result in results:
            for metric in preset.metrics:
                mean, sd, n = result.stats[metric]
                test = result.tests.get(metric, {})
                ok = bool(test) and "error" not in test
                ci = (test.get("ci95") or ["", ""]) if ok else ["", ""]
                row = {"configuration": result.arm.label, "slug": result.arm.slug, "metric": metric, "mean": mean, "sd": sd, "n": n,
                       "ci95_low": ci[0], "ci95_high": ci[1], "significant": _significant(test) if ok else ""}
                for key in ("n_folds", "mean_difference", "t_statistic", "df", "p", "p_holm", "p_naive_paired", "alternative"):
                    row[key] = test.get(key, "") if ok else ""
                writer.writerow(row)
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
                      title=f"{preset.name}: mean ± sd over folds; * differs from {preset.reference.label}, Holm p < {ALPHA:g}")
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


# ---- running a sweep --------------------------------------------------------------------------------------

Plan = list[tuple[TrainConfig, Path]]
"""Every run of a sweep: its configuration and its folder."""


def sweep(store: str | None, *, encoders: str | None, modalities: str | None, seeds: str | None, folds: int | None,
          preset: str | None, fusion: str, out: Path, progress: bool, allow_partial: bool, device: str, **common: Any) -> None:
    """`cli.py sweep`: every run of the plan (or of `preset`) that is not done yet, then the comparison table and
    plots. `common` are TrainConfig fields every run shares (epochs, batch size, lr, ...)."""
    store = store_or_default(store)
    study = preset_spec(preset, given=[n for n, v in (("--encoders", encoders), ("--modalities", modalities)) if v]) if preset else None
    check_store(store, allow_partial)
    common = dict(common, device=resolve_device(device))
    if study:
        run_preset(store, study, seeds, folds, common, out, progress, allow_partial)
        return
    run_plan(store, sweep_plan(encoders, modalities, seeds, folds, fusion, out, common), progress, allow_partial)
    print_written(write_report(out, out / "report"))


def names(text: str | None, default: tuple[str, ...]) -> list[str]:
    """A comma-separated option as a list, or `default` when it is not given."""
    return [n.strip() for n in text.split(",") if n.strip()] if text else list(default)


def parse_seeds(seeds: str) -> list[int]:
    try:
        return [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise StudyError(f"--seeds '{seeds}' must be comma-separated integers, e.g. 0,1,2") from None


def sweep_plan(encoders: str | None, modalities: str | None, seeds: str | None, folds: int | None, fusion: str, out: Path,
               common: dict[str, Any]) -> Plan:
    """Encoders x modalities x folds (or the stored split) x seeds; `fusion` for the av runs of single-input encoders.
    A model that fuses itself (pair and sequence encoders) has no unimodal form, so only its av run is planned."""
    seed_list = parse_seeds(seeds) if seeds else list(SWEEP_SEEDS)
    fold_options = {"folds": folds} if folds else {}
    plan = []
    for encoder in names(encoders, SWEEP_ENCODERS):
        fuses_itself = encoder in list_models() and get_spec(encoder).input_kind.startswith(("pair", "sequences"))
        for modality in names(modalities, SWEEP_MODALITIES):
            if fuses_itself and modality != "av":
                continue
            for fold in (range(folds) if folds else [None]):
                for seed in seed_list:
                    config = train_config(encoder, modality, None if fuses_itself or modality != "av" else fusion,
                                          seed=seed, fold=fold, **fold_options, **common)
                    plan.append((config, out / run_name(config)))
    return plan


def run_plan(store: str, plan: Plan, progress: bool, allow_partial: bool = False) -> None:
    """Train every (config, run folder) of `plan` whose metrics.json is missing; a finished run is kept, unless it was
    made with another configuration than planned (StudyError before anything trains: the table would mix them)."""
    for config, run_dir in plan:
        metrics = finished_metrics(run_dir)
        stale = stale_fields(dataclasses.asdict(config), metrics.get("config", {})) if metrics else []
        if stale:
            raise StudyError(f"'{run_dir}' was made with {', '.join(stale)}; use another --out, or delete that run to redo it")
    for k, (config, run_dir) in enumerate(plan, 1):
        if finished_metrics(run_dir):
            print(f"[{k}/{len(plan)}] {run_dir.name}: done already")
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"[{k}/{len(plan)}] {run_dir.name}")
        print_metrics(run_training(store, config, run_dir, progress, allow_partial), run_dir)


def preset_spec(name: str, given: list[str]) -> Preset:
    """The preset `name`; StudyError when it does not exist or when options it fixes (`given`) were passed too."""
    spec = get_preset(name)
    if given:
        raise StudyError(f"--preset {name} fixes the configurations; drop {' and '.join(given)}")
    return spec


def run_preset(store: str, spec: Preset, seeds: str | None, folds: int | None, common: dict[str, Any], out: Path, progress: bool,
               allow_partial: bool = False) -> None:
    """A study's table: every arm of the preset over folds x seeds (the preset's unless given), then its table."""
    seed_list = parse_seeds(seeds) if seeds else list(spec.seeds)
    folds = folds or spec.folds
    plan, arm_dirs = [], {}
    for arm in spec.arms:
        for fold in range(folds):
            for seed in seed_list:
                config = train_config(arm.encoder, arm.modality, arm.fusion, seed=seed, fold=fold, folds=folds, **common, **dict(arm.options))
                run_dir = out / run_name(config, prefix=arm.slug)
                plan.append((config, run_dir))
                arm_dirs.setdefault(arm.slug, []).append(run_dir)
    print(f"preset {spec.name}: {len(spec.arms)} configurations x {folds} folds x {len(seed_list)} seeds = {len(plan)} runs")
    run_plan(store, plan, progress, allow_partial)
    print_written(write_study(spec, {slug: [run for d in dirs for run in collect_runs(d)] for slug, dirs in arm_dirs.items()}, out / "report"))
