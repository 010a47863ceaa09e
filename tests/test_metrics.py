"""Metrics checked against small examples worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from encoders.metrics import classification_metrics, confusion_matrix, mean_sd

CREMA_D = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]

# 3 classes, imbalanced: class 0 has 4 samples, classes 1 and 2 have 2 each.
# Confusion (rows true): [[4, 0, 0], [1, 1, 0], [1, 0, 1]]
Y_TRUE_3 = np.array([0, 0, 0, 0, 1, 1, 2, 2])
Y_PRED_3 = np.array([0, 0, 0, 0, 0, 1, 2, 0])


def _assert_no_nan(value: object) -> None:
    """Walk a nested result and fail on any NaN or infinity."""
    if isinstance(value, dict):
        for item in value.values():
            _assert_no_nan(item)
    elif isinstance(value, list):
        for item in value:
            _assert_no_nan(item)
    elif isinstance(value, float):
        assert math.isfinite(value)


def test_confusion_matrix_counts_rows_true_columns_predicted() -> None:
    confusion = confusion_matrix(Y_TRUE_3, Y_PRED_3, 3)
    assert confusion.dtype == np.int64
    assert confusion.tolist() == [[4, 0, 0], [1, 1, 0], [1, 0, 1]]


def test_confusion_matrix_keeps_unused_classes_as_zero_rows() -> None:
    confusion = confusion_matrix([1, 1], [1, 2], 4)
    assert confusion.shape == (4, 4)
    assert confusion[1].tolist() == [0, 1, 1, 0]
    assert confusion.sum() == 2


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [([0, 3], [0, 1]), ([0, 1], [0, -1]), ([0, 1], [0]), ([0.5, 1], [0, 1])],
)
def test_confusion_matrix_rejects_bad_labels(y_true: list, y_pred: list) -> None:
    with pytest.raises(ValueError):
        confusion_matrix(y_true, y_pred, 3)


def test_accuracy_differs_from_uar_on_imbalanced_example() -> None:
    result = classification_metrics(Y_TRUE_3, Y_PRED_3, ["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(6 / 8)
    assert result["uar"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert result["macro_recall"] == pytest.approx(result["uar"])
    # precision: a = 4/6, b = 1/1, c = 1/1; F1: a = 0.8, b = c = 2/3
    assert result["macro_precision"] == pytest.approx((4 / 6 + 1 + 1) / 3)
    assert result["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 2 / 3) / 3)
    assert result["micro_f1"] == pytest.approx(6 / 8)
    assert result["micro_precision"] == pytest.approx(6 / 8) and result["micro_recall"] == pytest.approx(6 / 8)  # seed 002's table
    assert result["n"] == 8
    assert result["classes_absent"] == []
    assert result["confusion"] == [[4, 0, 0], [1, 1, 0], [1, 0, 1]]


def test_per_class_scores_on_imbalanced_example() -> None:
    per_class = classification_metrics(Y_TRUE_3, Y_PRED_3, ["a", "b", "c"])["per_class"]
    assert per_class["a"] == pytest.approx({"precision": 4 / 6, "recall": 1.0, "f1": 0.8, "support": 4})
    assert per_class["b"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert per_class["c"]["support"] == 2
    assert isinstance(per_class["c"]["support"], int)


def test_perfect_classifier_scores_one_everywhere() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 3])
    result = classification_metrics(labels, labels.copy(), CREMA_D)
    for key in ("accuracy", "uar", "macro_f1", "micro_f1", "macro_precision", "macro_recall"):
        assert result[key] == pytest.approx(1.0), key
    assert all(scores["f1"] == pytest.approx(1.0) for scores in result["per_class"].values())


def test_always_one_class_gives_uar_one_over_the_whole_class_list() -> None:
    # CREMA-D names, but only ANG, FEA, HAP, SAD occur in y_true; DIS and NEU are absent.
    y_true = np.array([0, 0, 0, 2, 2, 3, 5, 5, 5, 5])
    y_pred = np.full_like(y_true, 5)
    result = classification_metrics(y_true, y_pred, CREMA_D)
    assert result["uar"] == pytest.approx(1 / 6)  # the data set's 6 classes, not the 4 present
    assert result["accuracy"] == pytest.approx(4 / 10)
    assert result["classes_absent"] == ["DIS", "NEU"]
    # precision/F1 also average over all 6 classes: only SAD scores.
    assert result["macro_precision"] == pytest.approx((4 / 10) / 6)
    sad_f1 = 2 * 0.4 * 1.0 / 1.4
    assert result["macro_f1"] == pytest.approx(sad_f1 / 6)
    assert result["per_class"]["DIS"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_split_missing_a_class_is_averaged_over_the_class_list_not_the_classes_present() -> None:
    """A perfect classifier on a test split without NEU scores UAR 5/6, not 1.0.

    Averaging over the classes present would grade a split that lacks a class on an easier,
    smaller problem, and UARs of splits with different class coverage would not be comparable.
    """
    y_true = np.array([0, 1, 2, 3, 5, 0, 1, 2, 3, 5])  # every CREMA-D class but NEU (4)
    result = classification_metrics(y_true, y_true.copy(), CREMA_D)
    assert result["accuracy"] == pytest.approx(1.0)
    assert result["uar"] == pytest.approx(5 / 6)
    assert result["macro_recall"] == pytest.approx(5 / 6)
    assert result["macro_precision"] == pytest.approx(5 / 6)
    assert result["macro_f1"] == pytest.approx(5 / 6)
    assert result["classes_absent"] == ["NEU"]
    # The same predictions scored with a 5-class list give 1.0: the class list, not the split, sets the mean.
    five = [name for name in CREMA_D if name != "NEU"]
    remap = {0: 0, 1: 1, 2: 2, 3: 3, 5: 4}
    relabelled = np.array([remap[int(v)] for v in y_true])
    assert classification_metrics(relabelled, relabelled, five)["uar"] == pytest.approx(1.0)


def test_predicting_only_an_absent_class_scores_zero_and_counts_it_in_macro_f1() -> None:
    result = classification_metrics([0, 0, 1], [2, 2, 2], ["a", "b", "c"])
    assert result["accuracy"] == 0.0
    assert result["uar"] == 0.0
    assert result["classes_absent"] == ["c"]
    assert result["per_class"]["c"]["precision"] == 0.0
    assert result["macro_f1"] == 0.0


def test_empty_input_gives_zeros_not_nan_and_strict_json() -> None:
    result = classification_metrics(np.array([], dtype=int), np.array([], dtype=int), CREMA_D)
    assert result["n"] == 0
    assert result["accuracy"] == 0.0 and result["uar"] == 0.0 and result["macro_f1"] == 0.0
    assert result["classes_absent"] == CREMA_D
    _assert_no_nan(result)
    json.dumps(result, allow_nan=False)


def test_zero_division_never_yields_nan() -> None:
    # Class 1 is never predicted (precision 0/0) and class 2 never occurs (recall 0/0).
    result = classification_metrics([0, 1, 1], [0, 0, 0], ["a", "b", "c"])
    _assert_no_nan(result)
    assert result["per_class"]["b"]["precision"] == 0.0
    assert result["per_class"]["c"]["recall"] == 0.0


def test_result_is_json_serialisable_and_round_trips() -> None:
    result = classification_metrics(Y_TRUE_3.astype(np.int32), Y_PRED_3.tolist(), ["a", "b", "c"])
    decoded = json.loads(json.dumps(result, allow_nan=False))
    assert decoded == result


def test_duplicate_class_names_are_refused() -> None:
    with pytest.raises(ValueError):
        classification_metrics([0], [0], ["a", "a"])


def test_mean_sd_uses_sample_sd() -> None:
    mean, sd = mean_sd([0.5, 0.7])
    assert mean == pytest.approx(0.6)
    assert sd == pytest.approx(math.sqrt(0.02))  # ddof=1: ((0.1² + 0.1²) / 1) ** 0.5


def test_mean_sd_three_values() -> None:
    mean, sd = mean_sd([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert sd == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))


def test_mean_sd_single_value_has_zero_sd() -> None:
    assert mean_sd([0.42]) == (pytest.approx(0.42), 0.0)


def test_mean_sd_rejects_empty_and_nan() -> None:
    with pytest.raises(ValueError):
        mean_sd([])
    with pytest.raises(ValueError):
        mean_sd([0.1, float("nan")])
