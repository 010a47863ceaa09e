"""The paper's comparison table, built from a folder of finished runs.

Each run folder holds a ``metrics.json``; this module averages the test
metrics over seeds per (encoder type, encoder, modality, fusion) and writes
``comparison.md`` (Type | Encoder | Audio | Vision | Multimodal),
``comparison.csv`` (long format) and two bar charts.

Decisions, stated once here:

* Table rows are one per (encoder_type, encoder). A cell whose runs used a
  fusion (anything but ``none``) names it, ``concat: 0.64 ± 0.01 (...)``; several
  fusions for one encoder are stacked in the same cell (one line each, ``<br>``),
  so the unimodal baselines are not repeated on every fusion row.
* SD is the sample SD over replicates (ddof=1); ``n`` is the number of replicates. For k-fold runs
  (`train --fold`) the replicate is the fold, each the mean of its seeds (seeds share a test fold, so they
  are not independent): ``n=5 folds``. Runs on the store's split have only seeds as replicates: ``n=2``.
  A single replicate is shown as ``0.58 (n=1)``: it has no spread to report.
* `folds` is a setting only of k-fold runs: a run without ``--fold`` is labelled ``cv=stored split``,
  never by the unused default ``folds=5``.
* Human raters' accuracy is drawn only for CREMA-D stores (the dataset of the runs' predictions.json, else
  of their store); chance is 1/K for the runs' own K classes.
* Below the table, per group: per-emotion recall and F1, the confusion matrix over its runs, and tables by
  intensity, speaker sex and sentence (`encoders.breakdown`), with PNGs.
* Runs that differ in any other configuration field (pretrained, epochs, lr,
  weight decay, batch size, split seed, labelled fraction, the store's feature
  sets, ...) are never averaged together: each such field that varies among the
  runs is named in the cell, e.g. ``concat, lr=0.0001: ...``.
* Ablation runs (``ablate`` set) answer a different question and are left out
  of the table; the Markdown says how many were.
* Two runs with the same (type, encoder, modality, fusion, seed, fold) would count a
  replicate twice; the first by path is kept and the rest are reported. Runs of
  different actor folds (`train --fold`) are distinct replicates.
* Unreadable ``metrics.json`` files (bad JSON, missing keys) are skipped with a
  warning and listed at the foot of the Markdown.
* Every number is the run's own, measured on the partition it recorded (``partition.json``). The Markdown
  notes a run whose recorded partition is missing or no longer matches its sha256, and a cell whose seeds
  (same split options) were tested on different speakers, e.g. runs made before and after a store grew.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from encoders.breakdown import class_names_of, replicate_unit, replicate_values, section
from encoders.metrics import mean_sd
from encoders.partition import digest, fold_rule
from encoders.plots import HUMAN_RATERS_CREMA_D, MODALITY_LABELS, plot_comparison
from encoders.predictions import of_run as predictions_of
from encoders.significance import compare_metrics
from encoders.targets_report import DEFAULTS as TARGET_DEFAULTS, perceived_markdown, write_targets_csv
from stores.state import describe_partial

__all__ = ["collect_runs", "comparison_table", "random_init_notes", "write_report", "REPORTED_METRICS"]

#: Test metrics aggregated over seeds, in the order they are written.
REPORTED_METRICS: tuple[str, ...] = ("accuracy", "uar", "macro_f1")

REQUIRED_KEYS: tuple[str, ...] = ("encoder", "encoder_type", "modality", "test")
TABLE_COLUMNS: dict[str, str] = {"audio": "Audio", "vision": "Vision", "av": "Multimodal"}
TYPE_ORDER: dict[str, int] = {"2D": 0, "3D": 1, "fusion": 2}
NO_FUSION = "none"
MISSING = "—"
CSV_FIELDS: tuple[str, ...] = ("encoder_type", "encoder", "modality", "fusion", "variant", "metric", "mean", "sd", "n")
#: Configuration fields that do not change what a run measures (or are in the cell key already).
NOT_A_VARIANT: frozenset[str] = frozenset({
    "encoder", "modality", "fusion", "seed", "fold", "folds", "device", "max_memory_gb", "loader_workers", "out", "progress",
    "compile", "fuse_on_device",  # same numbers: fuse_on_device builds the stored fusion's exact tensor
})


# --------------------------------------------------------------------------- reading runs


def _read_run(path: Path) -> dict[str, Any]:
    """Load one metrics.json and check it has what the table needs; raise ValueError if not."""
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{type(error).__name__}: {error}") from error
    if not isinstance(run, dict):
        raise ValueError("top level is not a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in run]
    if missing:
        raise ValueError(f"missing keys {missing}")
    if not isinstance(run["test"], dict):
        raise ValueError("'test' is not an object")
    return {**run, "path": str(path)}


def _read_runs(runs_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every readable run under ``runs_dir`` (sorted by path) and the unreadable ones with reasons."""
    runs, skipped = [], []
    for path in sorted(Path(runs_dir).rglob("metrics.json")):
        try:
            runs.append(_read_run(path))
        except ValueError as error:
            skipped.append(f"{path}: {error}")
    return runs, skipped


def _warn_skipped(skipped: list[str]) -> None:
    """One warning naming every skipped file, so none is dropped silently."""
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable metrics.json: " + "; ".join(skipped),
                      stacklevel=3)


def collect_runs(runs_dir: Path) -> list[dict]:
    """All ``*/metrics.json`` below ``runs_dir`` (recursively, sorted by path).

    Each run dict gains a ``path`` key. Unreadable files are skipped with one
    warning listing them.
    """
    runs, skipped = _read_runs(runs_dir)
    _warn_skipped(skipped)
    return runs


# --------------------------------------------------------------------------- aggregating


def _fusion_of(run: dict[str, Any]) -> str:
    """The run's fusion, with null/empty spelled 'none'."""
    fusion = run.get("fusion")
    return NO_FUSION if fusion in (None, "") else str(fusion)


def _settings(run: dict[str, Any]) -> dict[str, str]:
    """Everything of a run's configuration that could change its numbers, as text, plus its store's feature sets."""
    config = run.get("config") or {}
    settings = {k: str(v) for k, v in config.items() if k not in NOT_A_VARIANT}
    settings = {**TARGET_DEFAULTS, **settings}  # runs made before --target learned the intended emotion, hard labels
    if config:  # `folds` means something only with `fold`: a run on the store's split is not "folds=5"
        settings["cv"] = f"{config.get('folds')} folds" if config.get("fold") is not None else "stored split"
    for kind, fingerprint in ((run.get("store") or {}).get("fingerprints") or {}).items():
        settings[f"store {kind}"] = str(fingerprint)
    return settings


def _variant(run: dict[str, Any], varying: Iterable[str]) -> str:
    """'lr=0.0001, epochs=40': the values of the fields that vary among the runs; '' when none does."""
    settings = _settings(run)
    return ", ".join(f"{key}={settings.get(key, '—')}" for key in sorted(varying))


def _varying_fields(runs: Iterable[dict[str, Any]]) -> set[str]:
    """Configuration fields with more than one value among `runs` (a missing field counts as a value)."""
    values: dict[str, set[str]] = defaultdict(set)
    all_settings = [_settings(run) for run in runs]
    keys = {key for settings in all_settings for key in settings}
    for settings in all_settings:
        for key in keys:
            values[key].add(settings.get(key, "—"))
    varying = {key for key, seen in values.items() if len(seen) > 1}
    return varying | set(TARGET_DEFAULTS) if varying & set(TARGET_DEFAULTS) else varying  # name target and label kind together


def _cell_key(run: dict[str, Any], varying: Iterable[str] = ()) -> tuple[str, str, str, str, str]:
    """What a table cell averages over replicates: (type, encoder, modality, fusion, variant)."""
    return (str(run["encoder_type"]), str(run["encoder"]), str(run["modality"]), _fusion_of(run), _variant(run, varying))


def _split_ablations(runs: Iterable[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(main runs, ablation runs): ablations have a non-null ``ablate``."""
    main, ablations = [], []
    for run in runs:
        (ablations if run.get("ablate") not in (None, "", False) else main).append(run)
    return main, ablations


def _drop_duplicate_seeds(runs: list[dict[str, Any]]) -> tuple[list[dict], list[str]]:
    """Keep the first run (by path) per cell and seed; return the paths dropped."""
    kept, dropped, seen = [], [], set()
    varying = _varying_fields(runs)
    for run in sorted(runs, key=lambda item: item.get("path", "")):
        identity = (*_cell_key(run, varying), run.get("seed"), run.get("fold"))  # k-fold runs: each fold is a replicate
        if identity in seen:
            dropped.append(run.get("path", repr(identity)))
            continue
        seen.add(identity)
        kept.append(run)
    return kept, dropped


def _aggregate_cell(fusion: str, variant: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sd and n per reported metric over the replicates of one cell: folds (seeds averaged within each)
    for k-fold runs, else seeds."""
    unit = replicate_unit(runs)
    cell: dict[str, Any] = {
        "fusion": fusion,
        "variant": variant,
        "unit": unit,
        "seeds": sorted({run.get("seed") for run in runs}, key=str),
    }
    for metric in REPORTED_METRICS:
        values = replicate_values(runs, lambda run: run["test"].get(metric))
        mean, sd = mean_sd(values) if values else (None, None)
        cell.update({f"{metric}_mean": mean, f"{metric}_sd": sd, f"{metric}_n": len(values)})
    cell["n"] = len(replicate_values(runs, lambda run: 0.0))
    return cell


def _row_sort_key(key: tuple[str, str]) -> tuple[int, str, str]:
    """2D, then 3D, then fusion encoders, then anything else; by name within a type."""
    encoder_type, encoder = key
    return (TYPE_ORDER.get(encoder_type, len(TYPE_ORDER)), encoder_type, encoder)


def _groups(runs: list[dict]) -> dict[tuple[str, str, str, str, str], list[dict]]:
    """The table's cells: (type, encoder, modality, fusion, variant) -> runs, ablations and duplicates left out."""
    main_runs, _ = _split_ablations(runs)
    unique_runs, _ = _drop_duplicate_seeds(main_runs)
    varying = _varying_fields(unique_runs)
    grouped: dict[tuple[str, str, str, str, str], list[dict]] = defaultdict(list)
    for run in unique_runs:
        grouped[_cell_key(run, varying)].append(run)
    return grouped


def comparison_table(runs: list[dict]) -> list[dict]:
    """One row per (encoder_type, encoder), averaging test metrics over replicates.

    Row: ``{"encoder_type", "encoder", "modalities": {modality: [cell, ...]}}``,
    one cell per fusion (sorted), each cell holding ``fusion``, ``n``, ``unit`` (folds or seeds), ``seeds``
    and ``<metric>_mean``, ``<metric>_sd``, ``<metric>_n`` for accuracy, UAR and
    macro-F1. Ablation runs and duplicated seeds are left out (see the module
    docstring); :func:`write_report` reports them.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for (encoder_type, encoder, modality, fusion, variant), cell_runs in sorted(_groups(runs).items()):
        row = rows.setdefault((encoder_type, encoder),
                              {"encoder_type": encoder_type, "encoder": encoder, "modalities": {}})
        row["modalities"].setdefault(modality, []).append(_aggregate_cell(fusion, variant, cell_runs))
    return [rows[key] for key in sorted(rows, key=_row_sort_key)]


# --------------------------------------------------------------------------- writing


def _format_mean_sd(mean: float | None, sd: float | None, n: int) -> str:
    """'0.58 ± 0.02'; '0.58' for a single run (no spread to show); or the missing mark."""
    if mean is None:
        return MISSING
    return f"{mean:.2f}" if n < 2 else f"{mean:.2f} ± {sd:.2f}"


def _format_cell(cell: dict[str, Any]) -> str:
    """'concat, lr=0.0001: 0.58 ± 0.02 (UAR 0.55 ± 0.03, n=2)'; a prefix only when there is a fusion or variant."""
    n = f"{cell['n']} folds" if cell.get("unit") == "folds" else str(cell["n"])
    text = (f"{_format_mean_sd(cell['accuracy_mean'], cell['accuracy_sd'], cell['accuracy_n'])} "
            f"(UAR {_format_mean_sd(cell['uar_mean'], cell['uar_sd'], cell['uar_n'])}, n={n})")
    prefix = ", ".join(p for p in (cell["fusion"] if cell["fusion"] != NO_FUSION else "", cell.get("variant", "")) if p)
    return f"{prefix}: {text}" if prefix else text


def _escape_markdown(text: str) -> str:
    """Keep a '|' in a name from splitting a table cell."""
    return text.replace("|", "\\|")


def _markdown_row(row: dict[str, Any]) -> str:
    """One table line: Type | Encoder | Audio | Vision | Multimodal."""
    cells = [_escape_markdown(row["encoder_type"]), _escape_markdown(row["encoder"])]
    for modality in TABLE_COLUMNS:
        modality_cells = row["modalities"].get(modality, [])
        cells.append("<br>".join(_escape_markdown(_format_cell(cell)) for cell in modality_cells) or MISSING)
    return "| " + " | ".join(cells) + " |"


def _partition_notes(runs: list[dict[str, Any]]) -> list[str]:
    """Runs whose recorded partition is gone or altered, and cells whose seeds were tested on different speakers."""
    notes, tested, old_rule = [], defaultdict(set), []
    for run in runs:
        recorded = run.get("partition")
        if not isinstance(recorded, dict):
            continue
        path = Path(run.get("path", "")).parent / str(recorded.get("file"))
        try:
            partition = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            notes.append(f"- `{run.get('path')}`: its recorded partition `{path.name}` is missing or unreadable.")
            continue
        if digest(partition) != recorded.get("sha256"):
            notes.append(f"- `{run.get('path')}`: `{path.name}` changed since the run was trained (sha256 differs).")
        if run.get("fold") not in (None, "") and fold_rule(partition) < 2:
            old_rule.append(str(run.get("path")))
        config = run.get("config") or {}
        tested[(*_cell_key(run), config.get("split_seed"), run.get("fold"))].add(tuple(partition.get("test", {}).get("speakers", [])))
    for (encoder_type, encoder, modality, fusion, *_), speakers in sorted(tested.items(), key=str):
        if len(speakers) > 1:
            notes.append(f"- {encoder} {modality} {fusion}: its seeds were tested on {len(speakers)} different sets of speakers "
                         "(runs made on different versions of the store?); the mean mixes test sets.")
    if old_rule:
        notes.append(f"- {len(old_rule)} k-fold run(s) were made under fold rule 1 (validation = the next fold, so training on "
                     "(k-2)/k of the speakers); they are not comparable with rule-2 runs: " + ", ".join(f"`{p}`" for p in old_rule[:5])
                     + (" ..." if len(old_rule) > 5 else ""))
    return notes


def random_init_notes(runs: Iterable[dict[str, Any]]) -> list[str]:
    """A note naming the runs that read face embeddings of a randomly initialised backbone (`cli.py embed`
    without --weights): their visual input is a random projection of the pixels, not a face descriptor, so
    their numbers must not be read as the study's."""
    flagged = [str(run.get("path", "?")) for run in runs if (run.get("store") or {}).get("embeddings_random_init")]
    if not flagged:
        return []
    return [f"- {len(flagged)} run(s) read face embeddings from a randomly initialised backbone (`cli.py embed` without "
            "`--weights`), not face descriptors: " + ", ".join(f"`{path}`" for path in flagged)]


def partial_store_notes(runs: Iterable[dict[str, Any]]) -> list[str]:
    """A note naming the runs trained on an unfinished store (`train --allow-partial`), with what they used: their
    numbers come from fewer clips and speakers than the store will hold, so they do not compare with the rest."""
    flagged = [run for run in runs if run.get("partial_store")]
    return [f"- trained on an unfinished store (--allow-partial): `{run.get('path', '?')}`: {describe_partial(run['partial_store'])}"
            for run in flagged]


def _notes(rows: list[dict], ablations: list[dict], duplicates: list[str], skipped: list[str], runs: list[dict] = ()) -> list[str]:
    """Footnotes for everything that did not make it into the table, and why."""
    notes = _partition_notes(list(runs)) + random_init_notes(runs) + partial_store_notes(runs)
    other = sorted({m for row in rows for m in row["modalities"] if m not in TABLE_COLUMNS})
    if other:
        notes.append(f"- Modalities not in the table (see the CSV): {', '.join(other)}.")
    if ablations:
        notes.append(f"- {len(ablations)} ablation run(s) (`ablate` set) left out of the table.")
    if duplicates:
        listed = ", ".join(f"`{path}`" for path in duplicates)
        notes.append(f"- {len(duplicates)} duplicate seed run(s) ignored (first by path kept): {listed}")
    if skipped:
        notes.append(f"- {len(skipped)} unreadable metrics.json skipped:")
        notes.extend(f"  - `{reason}`" for reason in skipped)
    return notes


def dataset_of(runs: list[dict[str, Any]]) -> set[str]:
    """The datasets the runs were trained on: their predictions.json, else their store's attributes (local stores
    only; a store that cannot be opened adds nothing)."""
    found = set()
    for run in runs:
        predictions = predictions_of(run)
        if predictions is not None and predictions.get("dataset"):
            found.add(str(predictions["dataset"]))
            continue
        location = (run.get("store") or {}).get("location")
        if location and Path(location).is_dir():
            try:
                from stores.store import FeatureStore

                found.add(str(FeatureStore.open(location).info.get("dataset")))
            except Exception:  # noqa: BLE001 - a store gone or of another format: the dataset stays unknown
                pass
    return found


def _is_crema_d(runs: list[dict[str, Any]]) -> bool:
    datasets = dataset_of(runs)
    return bool(datasets) and datasets == {"crema-d"}


def _markdown(rows: list[dict], notes: list[str], num_runs: int, runs: list[dict] = (), sections: list[str] = ()) -> str:
    """The whole comparison.md text."""
    header = ["Type", "Encoder", *TABLE_COLUMNS.values()]
    names = class_names_of(list(runs))
    chance = f"Chance = 1/{len(names)} ≈ {1 / len(names):.2f} for these runs' {len(names)} classes. " if names else ""
    human = ("Human raters on CREMA-D (Cao et al., 2014): " + ", ".join(f"{MODALITY_LABELS[m]} {r:.1%}" for m, r in HUMAN_RATERS_CREMA_D.items())
             + ". " if _is_crema_d(list(runs)) else "")
    lines = [
        "# Encoder comparison",
        "",
        f"Test accuracy (WAR) as mean ± sample sd over replicates; UAR in parentheses. A replicate is a fold for k-fold runs "
        "(shown as n=5 folds: each fold the mean of its seeds, which share its test speakers), else a seed (n=2). "
        f"Built from {num_runs} run(s). Multimodal cells name their fusion. {chance}{human}".rstrip(),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *(_markdown_row(row) for row in rows),
    ]
    if not rows:
        lines.append("| " + " | ".join(MISSING for _ in header) + " |")
    if notes:
        lines += ["", "Notes:", "", *notes]
    if sections:
        lines += ["", "## Per class, by intensity, speaker sex and sentence", "", *sections]
    return "\n".join(lines) + "\n"


def _csv_records(rows: list[dict]) -> list[dict[str, Any]]:
    """Long format: one line per (row, modality, fusion, metric) with a value."""
    records = []
    for row in rows:
        for modality, cells in row["modalities"].items():
            for cell in cells:
                for metric in REPORTED_METRICS:
                    if cell[f"{metric}_mean"] is None:
                        continue
                    records.append({
                        "encoder_type": row["encoder_type"], "encoder": row["encoder"],
                        "modality": modality, "fusion": cell["fusion"], "variant": cell.get("variant", ""), "metric": metric,
                        "mean": cell[f"{metric}_mean"], "sd": cell[f"{metric}_sd"],
                        "n": cell[f"{metric}_n"],
                    })
    return records


def _write_csv(path: Path, rows: list[dict]) -> Path:
    """comparison.csv with full-precision floats (the Markdown rounds, the CSV does not)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        writer.writerows(_csv_records(rows))
    return path


def write_report(runs_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Write comparison.md, comparison.csv, comparison_accuracy.png and comparison_uar.png, and per group
    per_class_<group>.png and confusion_<group>.png (linked from the Markdown).

    Returns ``{"markdown", "csv", "accuracy_plot", "uar_plot"}`` -> path.
    """
    runs, skipped = _read_runs(Path(runs_dir))
    _warn_skipped(skipped)
    main_runs, ablations = _split_ablations(runs)
    _, duplicates = _drop_duplicate_seeds(main_runs)
    rows = comparison_table(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for (_, encoder, modality, fusion, variant), group in sorted(_groups(runs).items()):
        label = " ".join(p for p in (encoder, modality, fusion if fusion != NO_FUSION else "") if p) + (f", {variant}" if variant else "")
        sections += section(label, group, out_dir)
    markdown_path = out_dir / "comparison.md"
    markdown_path.write_text(_markdown(rows, _notes(rows, ablations, duplicates, skipped, main_runs), len(runs), main_runs, sections)
                             + perceived_markdown(main_runs), encoding="utf-8")  # every target side by side: encoders/targets_report.py
    targets_csv = write_targets_csv(main_runs, out_dir / "targets.csv")
    names = class_names_of(main_runs)
    return ({"targets_csv": targets_csv} if targets_csv else {}) | {
        "markdown": markdown_path,
        "csv": _write_csv(out_dir / "comparison.csv", rows),
        "accuracy_plot": plot_comparison(rows, out_dir / "comparison_accuracy.png", metric="accuracy", num_classes=len(names) or 6,
                                         human_reference=_is_crema_d(main_runs)),
        "uar_plot": plot_comparison(rows, out_dir / "comparison_uar.png", metric="uar", num_classes=len(names) or 6),
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m encoders.report RUNS_DIR OUT_DIR``: print the written paths."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    arguments = parser.parse_args(argv)
    for name, path in write_report(arguments.runs_dir, arguments.out_dir).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()


class ReportError(ValueError):
    """Nothing to report on: the folder holds no finished runs."""


def report_runs(runs: Path, out: Path | None = None, compare: tuple[str, str] | None = None, metric: str = "accuracy,uar,macro_f1",
                alternative: str = "two-sided") -> None:
    """`cli.py report`: the comparison table of the runs under `runs` (into `out`, default RUNS/report), or with
    `compare` the test of configuration A against B on each of the comma-separated `metric`s (compare.json)."""
    if not runs.is_dir() or not any(runs.rglob("metrics.json")):
        raise ReportError(f"'{runs}' holds no run directories with metrics.json; train something first")
    folder = out or runs / "report"
    if not compare:
        print_written(write_report(runs, folder))
        return
    results = compare_metrics(collect_runs(runs), *compare, metrics=[m.strip() for m in metric.split(",") if m.strip()], alternative=alternative)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare.json").write_text(json.dumps([r.as_dict() for r in results], indent=2))
    for result in results:
        print("\n".join(result.lines()) + "\n")
    print(f"written: {folder / 'compare.json'}")


def print_written(paths: dict[str, Path]) -> None:
    """A table just written: its Markdown, then where its files are."""
    print(paths["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
