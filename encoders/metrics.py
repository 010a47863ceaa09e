"""Classification metrics written out by hand, so every number in a report is traceable.

Conventions (they matter when comparing with published numbers):

* ``accuracy`` is the weighted average recall (WAR): correct / total.
* ``uar`` (unweighted average recall) is the mean per-class recall over the
  data set's class list (``class_names``, e.g. CREMA-D's 6), never over the
  classes that happen to occur in a batch or split. The denominator is fixed,
  so UAR means the same thing on every split and every run. A class with no
  true samples has an undefined recall (0/0); it counts as 0 and is named in
  ``classes_absent``, so a split that lacks a class is visibly penalised
  (a perfect classifier scores (K - absent) / K) instead of being silently
  graded on an easier, smaller problem. This is scikit-learn's
  ``recall_score(labels=range(K), average="macro", zero_division=0)``. With
  every class present (the normal CREMA-D test split) it is exactly
  MultiMAE-DER's UAR.
* ``macro_recall`` equals ``uar``; ``macro_precision`` and ``macro_f1``
  average over the same full class list. A class the model never predicts
  has precision 0 (0/0), and a class it predicts but that never occurs has
  precision 0 and F1 0; both stay in the mean.
* ``micro_f1``, ``micro_precision`` and ``micro_recall`` pool true/false positives
  over classes; for single-label classification each equals ``accuracy``. They are
  reported because seed 002's table lists them (and as a cross-check).
* Every zero division gives 0.0, so the dict never holds NaN and always
  serialises to strict JSON.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["confusion_matrix", "classification_metrics", "mean_sd"]


def _as_labels(values: Any, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D int64 array, refusing non-integral labels."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} holds non-integer labels")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Count (true, predicted) pairs: rows are true classes, columns predicted, int64.

    Labels outside ``0..num_classes-1`` raise instead of being dropped, because a
    silently shrunk matrix would inflate every metric computed from it.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    true = _as_labels(y_true, "y_true")
    pred = _as_labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {true.size} vs {pred.size}")
    for name, labels in (("y_true", true), ("y_pred", pred)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    flat = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio with 0.0 wherever the denominator is 0 (no NaN, no warning)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1, support and predicted counts for every class."""
    true_positives = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2.0 * precision * recall, precision + recall)
    return {
        "true_positives": true_positives,
        "support": support,
        "predicted": predicted,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def _micro_scores(scores: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """Precision, recall and F1 from pooled counts; each equals accuracy for single-label predictions."""
    pooled_tp = scores["true_positives"].sum()
    micro_precision = float(_safe_divide(pooled_tp, scores["predicted"].sum()))
    micro_recall = float(_safe_divide(pooled_tp, scores["support"].sum()))
    return micro_precision, micro_recall, float(_safe_divide(2.0 * micro_precision * micro_recall, micro_precision + micro_recall))


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """All the headline metrics for one evaluation, as a JSON-serialisable dict.

    ``class_names`` must be the data set's whole class list (the store's
    ``class_names``): every macro score averages over it. See the module
    docstring for how absent classes and zero divisions are handled; the
    returned ``classes_absent`` lists the classes with no true sample, whose
    recall counted as 0.
    """
    names = [str(name) for name in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    confusion = confusion_matrix(y_true, y_pred, len(names))
    scores = _per_class_scores(confusion)
    present_in_truth = scores["support"] > 0
    total = int(confusion.sum())
    micro_precision, micro_recall, micro_f1 = _micro_scores(scores)
    uar = float(scores["recall"].mean())  # over the whole class list, absent classes included
    per_class = {
        name: {
            "precision": float(scores["precision"][index]),
            "recall": float(scores["recall"][index]),
            "f1": float(scores["f1"][index]),
            "support": int(scores["support"][index]),
        }
        for index, name in enumerate(names)
    }
    return {
        "accuracy": float(_safe_divide(scores["true_positives"].sum(), total)),
        "uar": uar,
        "macro_f1": float(scores["f1"].mean()),
        "micro_f1": micro_f1,
        "micro_precision": micro_precision,
        "micro_recall": micro_recall,
        "macro_precision": float(scores["precision"].mean()),
        "macro_recall": uar,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "class_names": names,
        "classes_absent": [name for name, present in zip(names, present_in_truth) if not present],
        "n": total,
    }


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over seeds.

    The sample SD is what papers report for "mean ± sd over k seeds"; with a
    single seed there is no spread to estimate, so the SD is 0.0 rather than NaN.
    """
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_sd needs at least one value")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"mean_sd got non-finite values: {array.tolist()}")
    mean = float(array.mean())
    sd = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return mean, sd
