"""The figures people look at: confusion matrices, learning curves, encoder comparisons.

Each function draws one figure, writes it as a PNG and returns the path. Figures
are built on ``matplotlib.figure.Figure`` directly (not pyplot), so nothing is
left open between calls and the functions are safe to call from worker
processes on a machine without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "HUMAN_RATERS_CREMA_D",
    "MODALITY_LABELS",
    "plot_confusion",
    "plot_learning_curve",
    "plot_comparison",
    "plot_per_class",
    "plot_study",
]

DPI = 120

#: Human raters' recognition rate on CREMA-D (Cao et al., 2014), per modality.
HUMAN_RATERS_CREMA_D: dict[str, float] = {"audio": 0.409, "vision": 0.582, "av": 0.636}

#: How modality keys are written on figures and in tables.
MODALITY_LABELS: dict[str, str] = {"audio": "audio", "vision": "vision", "av": "multimodal"}

_MODALITY_COLOURS: dict[str, str] = {"audio": "#1f77b4", "vision": "#ff7f0e", "av": "#2ca02c"}
_EXTRA_FUSION_COLOURS = ["#2ca02c", "#98df8a", "#17becf", "#9edae5", "#bcbd22", "#8c564b"]
_NO_FUSION = {None, "", "none"}


def _save(figure: Figure, path: Path | str) -> Path:
    """Write ``figure`` as a PNG, creating the folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png", bbox_inches="tight")
    return path


# --------------------------------------------------------------------------- confusion


def _row_normalise(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its total (recall per true class); empty rows stay 0."""
    totals = confusion.sum(axis=1, keepdims=True).astype(np.float64)
    out = np.zeros(confusion.shape, dtype=np.float64)
    np.divide(confusion, totals, out=out, where=totals != 0)
    return out


def _cell_text(count: int, fraction: float | None) -> str:
    """Count, and the row fraction as a percentage when normalised."""
    return f"{count}" if fraction is None else f"{count}\n{fraction:.0%}"


def plot_confusion(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: Path | str,
    *,
    title: str,
    normalise: bool = True,
) -> Path:
    """Heat map of a confusion matrix (rows true, columns predicted) with counts in the cells.

    Colour shows the row-normalised fraction by default, so a rare class's
    mistakes are as visible as a frequent one's; the raw count is still printed.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(class_names):
        raise ValueError(f"confusion shape {counts.shape} does not match {len(class_names)} class names")
    shown = _row_normalise(counts) if normalise else counts.astype(np.float64)
    vmax = 1.0 if normalise else max(float(shown.max()), 1.0)
    size = 1.0 + 0.9 * len(class_names)
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.add_subplot()
    image = axes.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    colour_bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colour_bar.set_label("fraction of true class" if normalise else "count")
    for row, column in np.ndindex(counts.shape):
        fraction = shown[row, column] if normalise else None
        colour = "white" if shown[row, column] > 0.5 * vmax else "black"
        axes.text(column, row, _cell_text(int(counts[row, column]), fraction),
                  ha="center", va="center", color=colour, fontsize=8)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right")
    axes.set_yticks(ticks, labels=list(class_names))
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"{title}\n(n = {int(counts.sum())})")
    return _save(figure, path)


# --------------------------------------------------------------------------- learning curve


def _series(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray | None:
    """Values of ``key`` over epochs as floats (NaN where missing); None if never logged."""
    if not any(item.get(key) is not None for item in history):
        return None
    return np.array([np.nan if item.get(key) is None else float(item[key]) for item in history])


def _epochs(history: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Epoch numbers, counting from 1 where the history does not say."""
    return np.array([int(item.get("epoch", index + 1)) for index, item in enumerate(history)])


def _pick_best_epoch(history: Sequence[Mapping[str, Any]], epochs: np.ndarray) -> int | None:
    """The epoch with the highest val_uar (else val_accuracy, else lowest val_loss)."""
    preferences = (("val_uar", np.nanargmax), ("val_accuracy", np.nanargmax), ("val_loss", np.nanargmin))
    for key, better in preferences:
        values = _series(history, key)
        if values is not None and not np.all(np.isnan(values)):
            return int(epochs[better(values)])
    return None


def _draw_curves(axes: Axes, epochs: np.ndarray, history: Sequence[Mapping[str, Any]],
                 keys: Sequence[tuple[str, str, str]]) -> None:
    """One line per logged key: (key, legend label, line style)."""
    for key, label, style in keys:
        values = _series(history, key)
        if values is not None:
            axes.plot(epochs, values, style, label=label, marker="o", markersize=3)


def _mark_best_epoch(axes: Axes, best_epoch: int, note: str) -> None:
    """Vertical dashed line at the chosen checkpoint."""
    axes.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=note)


def plot_learning_curve(
    history: Sequence[Mapping[str, Any]],
    path: Path | str,
    *,
    title: str,
    best_epoch: int | None = None,
) -> Path:
    """Loss (left) and accuracy/UAR (right) per epoch, with the kept epoch marked.

    Marking the checkpoint makes over-fitting and early-stopping choices visible
    next to the number the run reports. ``best_epoch`` defaults to max val_uar.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    epochs = _epochs(history)
    chosen = best_epoch if best_epoch is not None else _pick_best_epoch(history, epochs)
    figure = Figure(figsize=(11, 4.2))
    loss_axes, score_axes = figure.subplots(1, 2)
    _draw_curves(loss_axes, epochs, history, [("train_loss", "train", "-"), ("val_loss", "validation", "--")])
    _draw_curves(score_axes, epochs, history, [
        ("train_accuracy", "train accuracy", "-"),
        ("val_accuracy", "validation accuracy", "--"),
        ("val_uar", "validation UAR", ":"),
    ])
    if chosen is not None:
        for axes in (loss_axes, score_axes):
            _mark_best_epoch(axes, chosen, f"best epoch ({chosen})")
    loss_axes.set(title="loss", xlabel="epoch", ylabel="cross-entropy loss")
    score_axes.set(title="accuracy and UAR", xlabel="epoch", ylabel="score", ylim=(0.0, 1.02))
    for axes in (loss_axes, score_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title)
    return _save(figure, path)


# --------------------------------------------------------------------------- comparison


def _series_label(modality: str, fusion: str | None) -> str:
    """Legend text for one bar series, naming the fusion for multimodal cells."""
    base = MODALITY_LABELS.get(modality, modality)
    return base if fusion in _NO_FUSION else f"{base} ({fusion})"


def _cell_series(cell: Mapping[str, Any]) -> str | None:
    """A cell's series name: its fusion, with the configuration variant (e.g. 'lr=0.0001') when runs differ."""
    fusion, variant = cell.get("fusion"), cell.get("variant")
    if not variant:
        return fusion
    return variant if fusion in _NO_FUSION else f"{fusion}, {variant}"


def _bar_series(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str | None]]:
    """Every (modality, fusion and variant) found in the rows, modalities in table order."""
    found: set[tuple[str, str | None]] = set()
    for row in rows:
        for modality, cells in row["modalities"].items():
            found.update((modality, _cell_series(cell)) for cell in cells)
    order = {modality: index for index, modality in enumerate(MODALITY_LABELS)}
    return sorted(found, key=lambda item: (order.get(item[0], len(order)), item[0], str(item[1])))


def _series_colours(series: Sequence[tuple[str, str | None]]) -> list[str]:
    """Modality colours; several multimodal fusions get distinct greens/teals."""
    colours, extra = [], iter(_EXTRA_FUSION_COLOURS[1:] + _EXTRA_FUSION_COLOURS[:1])
    seen_modalities: set[str] = set()
    for modality, _ in series:
        if modality in seen_modalities:
            colours.append(next(extra, "#7f7f7f"))
        else:
            colours.append(_MODALITY_COLOURS.get(modality, "#7f7f7f"))
        seen_modalities.add(modality)
    return colours


def _find_cell(row: Mapping[str, Any], modality: str, fusion: str | None) -> Mapping[str, Any] | None:
    """The row's cell for (modality, fusion), if that combination was run."""
    for cell in row["modalities"].get(modality, []):
        if _cell_series(cell) == fusion:
            return cell
    return None


def _draw_bars(axes: Axes, rows: Sequence[Mapping[str, Any]], metric: str) -> None:
    """Grouped bars with sd error bars and the mean written above each bar."""
    series = _bar_series(rows)
    width = 0.8 / max(len(series), 1)
    for index, ((modality, fusion), colour) in enumerate(zip(series, _series_colours(series))):
        positions, means, sds = [], [], []
        for group, row in enumerate(rows):
            cell = _find_cell(row, modality, fusion)
            if cell is not None and cell.get(f"{metric}_mean") is not None:
                positions.append(group - 0.4 + width * (index + 0.5))
                means.append(cell[f"{metric}_mean"])
                sds.append(cell.get(f"{metric}_sd") or 0.0)
        bars = axes.bar(positions, means, width * 0.95, yerr=sds, capsize=3, color=colour,
                        label=_series_label(modality, fusion), edgecolor="black", linewidth=0.5)
        axes.bar_label(bars, labels=[f"{mean:.2f}" for mean in means], padding=2, fontsize=7)


def _draw_references(axes: Axes, num_classes: int, human_reference: bool) -> None:
    """Chance level and, optionally, human raters' accuracy per modality."""
    axes.axhline(1.0 / num_classes, color="black", linestyle="--", linewidth=1,
                 label=f"chance (1/{num_classes})")
    if not human_reference:
        return
    for modality, rate in HUMAN_RATERS_CREMA_D.items():
        axes.axhline(rate, color=_MODALITY_COLOURS[modality], linestyle=":", linewidth=1.5,
                     label=f"human raters, {MODALITY_LABELS[modality]} ({rate:.1%})")


def plot_comparison(
    rows: Sequence[Mapping[str, Any]],
    path: Path | str,
    *,
    metric: str = "accuracy",
    num_classes: int = 6,
    human_reference: bool = False,
    title: str | None = None,
) -> Path:
    """Grouped bars: one group per encoder, one bar per modality (and fusion), sd over the replicates.

    ``rows`` are :func:`encoders.report.comparison_table` rows. The chance line
    (1/num_classes) is always drawn, so a bar near it reads as "learned nothing";
    ``human_reference`` adds the CREMA-D human raters (an accuracy, so only
    meaningful with ``metric="accuracy"``, and only true of a CREMA-D store).
    The default title says "over folds" or "over seeds" from the cells' ``unit``.
    """
    figure = Figure(figsize=(max(6.0, 1.8 * len(rows) + 2.5), 4.8))
    axes = figure.add_subplot()
    if rows:
        _draw_bars(axes, rows, metric)
    else:
        axes.text(0.5, 0.5, "no runs found", ha="center", va="center", transform=axes.transAxes)
    _draw_references(axes, num_classes, human_reference)
    axes.set_xticks(range(len(rows)), labels=[f"{row['encoder']}\n({row['encoder_type']})" for row in rows])
    metric_label = {"accuracy": "accuracy (WAR)", "uar": "UAR"}.get(metric, metric)
    axes.set(xlabel="encoder", ylabel=f"test {metric_label}", ylim=(0.0, 1.0),
             title=title or f"Test {metric_label}, mean ± sd over {_units(rows)}")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(figure, path)


def _units(rows: Sequence[Mapping[str, Any]]) -> str:
    """What the cells' sd is over: 'folds', 'seeds', or both named when the table mixes them."""
    units = sorted({cell.get("unit", "seeds") for row in rows for cells in row["modalities"].values() for cell in cells})
    return " or ".join(units) if units else "replicates"


# --------------------------------------------------------------------------- per class (report sections)


def plot_per_class(
    class_names: Sequence[str],
    recall: Sequence[tuple[float, float]],
    f1: Sequence[tuple[float, float]],
    path: Path | str,
    *,
    title: str,
) -> Path:
    """Two bars per class, recall and F1 (mean, sd error bar): which emotions a configuration gets right."""
    figure = Figure(figsize=(max(6.0, 0.9 * len(class_names) + 2.5), 4.2))
    axes = figure.add_subplot()
    x = np.arange(len(class_names))
    for offset, (label, values) in zip((-0.2, 0.2), (("recall", recall), ("F1", f1))):
        means, sds = [m for m, _ in values], [s for _, s in values]
        bars = axes.bar(x + offset, means, 0.38, yerr=sds, capsize=3, label=label, edgecolor="black", linewidth=0.5)
        axes.bar_label(bars, labels=[f"{m:.2f}" for m in means], padding=2, fontsize=7)
    axes.axhline(1.0 / max(1, len(class_names)), color="black", linestyle="--", linewidth=1, label=f"chance (1/{len(class_names)})")
    axes.set_xticks(x, labels=list(class_names))
    axes.set(ylabel="test score", ylim=(0.0, 1.05), title=title)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(figure, path)


# --------------------------------------------------------------------------- a study's table (sweep --preset)


def plot_study(
    bars: Sequence[tuple[str, Sequence[float | None], Sequence[float | None], Sequence[bool]]],
    metric_labels: Sequence[str],
    path: Path | str,
    *,
    title: str = "",
) -> Path:
    """Grouped bars: one group per metric, one bar per configuration (mean, sd error bar), a star over a bar
    the reference configuration beats significantly. ``bars``: (label, means, sds, significant) per configuration,
    each list in ``metric_labels`` order; a missing mean (None) draws no bar."""
    figure = Figure(figsize=(max(7.0, 1.3 * len(metric_labels) + 3.0), 4.8))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(bars))
    x = np.arange(len(metric_labels))
    for k, (label, means, sds, significant) in enumerate(bars):
        shown = np.array([m is not None for m in means])
        heights = np.array([m if m is not None else 0.0 for m in means])
        errors = np.array([s if s is not None else 0.0 for s in sds])
        at = x - 0.4 + width * (k + 0.5)
        axes.bar(at[shown], heights[shown], width, yerr=errors[shown], capsize=3, label=label)
        for position, height, error, star in zip(at, heights, errors, significant):
            if star:
                axes.text(position, min(height + error + 0.02, 0.97), "*", ha="center", fontsize=12)
    axes.set_xticks(x, labels=list(metric_labels))
    axes.set(ylabel="test score", ylim=(0.0, 1.0), title=title)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(figure, path)
