"""The statistics of `report --compare` and a study's table: folds as replicates, the corrected resampled t-test,
two- and one-sided tests, Holm, the speaker bootstrap and the refusal of runs tested on different clips.
Runs are written as files with per-clip predictions, and their metrics computed from those predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from encoders.metrics import classification_metrics
from encoders.report import collect_runs
from encoders.significance import (
    CompareError, TestClipsDiffer, compare_metrics, compare_runs, corrected_t_test, holm, metric_from_confusion, naive_paired_p,
)

CLASSES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
K = 5


def fold_clips(fold: int, speakers: int = 4, per: int = 12) -> tuple[list[str], list[str], list[int]]:
    ids = [f"{fold}{s:02d}_{c:02d}" for s in range(speakers) for c in range(per)]
    return ids, [i.split("_")[0] for i in ids], [c % 6 for s in range(speakers) for c in range(per)]


def write_run(root: Path, name: str, encoder: str, fold: int, seed: int, correct: float, *, rng: np.random.Generator,
              drop: int = 0) -> None:
    """A run whose test predictions are right on a `correct` share of its fold's clips; `drop` leaves out clips."""
    ids, speakers, labels = (x[drop:] for x in fold_clips(fold))
    labels = np.asarray(labels)
    right = rng.random(len(ids)) < correct
    predicted = np.where(right, labels, (labels + 1 + rng.integers(0, 5, len(ids))) % 6)
    folder = root / name
    folder.mkdir(parents=True)
    metrics = {"encoder": encoder, "encoder_type": "2D", "modality": "av", "fusion": "concat", "seed": seed, "fold": f"{fold}/{K}",
               "ablate": None, "test": classification_metrics(labels, predicted, CLASSES), "clips": {"train": 160, "val": 32, "test": 48},
               "config": {"encoder": encoder, "seed": seed, "fold": fold, "folds": K}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "predictions.json").write_text(json.dumps({
        "split": "test", "dataset": "sample", "class_names": CLASSES, "clip_id": ids, "speaker": speakers,
        "sentence": ["IEO" if i.endswith(("0", "2", "4")) else "TIE" for i in ids], "intensity": ["XX"] * len(ids),
        "sex": [""] * len(ids), "label": labels.tolist(), "predicted": predicted.tolist()}))


@pytest.fixture
def two_arms(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for fold in range(K):
        for seed in range(2):
            write_run(tmp_path, f"good-f{fold}-s{seed}", "ladder", fold, seed, 0.75, rng=rng)
            write_run(tmp_path, f"base-f{fold}-s{seed}", "resnet18", fold, seed, 0.45, rng=rng)
    return tmp_path


def test_holm_matches_the_textbook_example():
    # Holm (1979) as the textbooks work it: p = .01, .04, .03, .005 for H1..H4. Sorted: .005 x 4 = .02, .01 x 3 = .03,
    # .03 x 2 = .06, .04 x 1 = .04 -> .06 (monotone). At 0.05 H4 and H1 are rejected, H2 and H3 are not.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])


def test_corrected_p_is_larger_than_the_naive_paired_p_on_correlated_folds():
    """Five fold differences, all positive: the plain paired t-test calls it (p < .05); once the variance is
    inflated by 1/J + n_test/n_train (the folds share training data), it is not."""
    d = [0.02, 0.05, 0.03, 0.06, 0.01]
    ratio = 48 / 160
    naive = naive_paired_p(d)
    t, df, corrected = corrected_t_test(d, ratio)
    assert naive == pytest.approx(stats.ttest_rel(np.add(d, 0.5), np.full(5, 0.5)).pvalue)
    hand_t = np.mean(d) / np.sqrt((1 / 5 + ratio) * np.var(d, ddof=1))
    assert (t, df) == (pytest.approx(hand_t), 4) and corrected == pytest.approx(2 * stats.t.sf(hand_t, 4))
    assert naive < 0.05 < corrected


def test_two_sided_by_default_one_sided_only_when_asked():
    d = [0.02, 0.05, 0.03, 0.06, 0.01]
    _, _, two = corrected_t_test(d, 0.3)
    _, _, greater = corrected_t_test(d, 0.3, "greater")
    _, _, less = corrected_t_test(d, 0.3, "less")
    assert greater == pytest.approx(two / 2) and less == pytest.approx(1 - two / 2)


def test_folds_are_the_replicates_and_seeds_are_averaged_within_them(two_arms: Path):
    runs = collect_runs(two_arms)
    result = compare_runs(runs, "encoder=ladder", "encoder=resnet18", "accuracy")
    assert result.folds == [f"{f}/{K}" for f in range(K)] and result.df == K - 1  # 5 replicates, not 10 (fold, seed) pairs
    by = {(r["encoder"], r["fold"]): [] for r in runs}
    for r in runs:
        by[(r["encoder"], r["fold"])].append(r["test"]["accuracy"])
    assert result.values_a == pytest.approx([np.mean(by[("ladder", f"{f}/{K}")]) for f in range(K)])
    assert result.test_train_ratio == pytest.approx(48 / 160)
    t, _, p = corrected_t_test(np.subtract(result.values_a, result.values_b), 48 / 160)
    assert (result.t_statistic, result.p) == (pytest.approx(t), pytest.approx(p))
    assert result.alternative == "two-sided" and result.p < 0.05


def test_the_speaker_bootstrap_interval_brackets_the_difference_and_excludes_zero_for_a_clear_win(two_arms: Path):
    result = compare_runs(collect_runs(two_arms), "encoder=ladder", "encoder=resnet18", "macro_f1")
    low, high = result.ci
    assert 0 < low < result.mean_difference < high < 0.6
    assert any("only 4 test speaker(s)" in note for note in result.notes)  # so few speakers: flagged as too narrow
    same = compare_runs(collect_runs(two_arms), "encoder=ladder", "encoder=ladder", "macro_f1")
    assert same.ci == (pytest.approx(0.0, abs=1e-12), pytest.approx(0.0, abs=1e-12)) and same.p == 1.0


def test_the_bootstrap_metrics_are_the_reported_metrics():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 6, 200), rng.integers(0, 6, 200)
    reported = classification_metrics(y, p, CLASSES)
    confusion = np.asarray(reported["confusion"])
    for metric in ("accuracy", "uar", "macro_f1", "macro_precision", "macro_recall", "micro_f1"):
        assert float(metric_from_confusion(confusion, metric)) == pytest.approx(reported[metric])


def test_holm_over_the_metrics_of_one_report(two_arms: Path):
    results = compare_metrics(collect_runs(two_arms), "encoder=ladder", "encoder=resnet18", ["accuracy", "uar", "macro_f1", "uar"])
    assert [r.metric for r in results] == ["accuracy", "uar", "macro_f1"]  # each metric once
    assert [r.p_holm for r in results] == pytest.approx(holm([r.p for r in results]))
    assert all(r.family == 3 and r.p_holm >= r.p for r in results)


def test_runs_tested_on_different_clips_are_refused(two_arms: Path):
    write_run(two_arms, "short-f0", "ladder-short", 0, 0, 0.7, rng=np.random.default_rng(2), drop=3)
    write_run(two_arms, "short-f1", "ladder-short", 1, 0, 0.7, rng=np.random.default_rng(3))
    with pytest.raises(TestClipsDiffer, match=r"fold 0/5: .* on 48 clips and .* on 45, 3 differ \(e\.g\. 000_00\)"):
        compare_runs(collect_runs(two_arms), "encoder=resnet18", "encoder=ladder-short")


def test_too_few_folds_or_a_bad_alternative_is_a_compare_error(two_arms: Path):
    write_run(two_arms, "one-f0", "single", 0, 0, 0.7, rng=np.random.default_rng(4))
    with pytest.raises(CompareError, match="1 fold"):
        compare_runs(collect_runs(two_arms), "encoder=ladder", "encoder=single")
    with pytest.raises(CompareError, match="two-sided, greater, less"):
        compare_runs(collect_runs(two_arms), "encoder=ladder", "encoder=resnet18", alternative="bigger")


@pytest.mark.slow  # two CLI starts: ~30 s on a shared 2-core machine
def test_report_compare_through_the_cli_prints_the_test_and_refuses_other_clips_with_exit_2(two_arms: Path):
    from tests.conftest import run_cli

    result = run_cli("report", "--runs", str(two_arms), "--compare", "encoder=ladder", "encoder=resnet18", "--alternative", "greater")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "corrected resampled t-test" in out and "Holm-adjusted over 3 test(s)" in out and "95 % CI [" in out
    assert "H1: A > B (greater)" in out and "folds matched: 5" in out
    saved = json.loads((two_arms / "report" / "compare.json").read_text())
    assert [c["metric"] for c in saved] == ["accuracy", "uar", "macro_f1"] and all(c["alternative"] == "greater" for c in saved)
    write_run(two_arms, "short-f0", "ladder-short", 0, 0, 0.7, rng=np.random.default_rng(2), drop=3)
    write_run(two_arms, "short-f1", "ladder-short", 1, 0, 0.7, rng=np.random.default_rng(3))
    refused = run_cli("report", "--runs", str(two_arms), "--compare", "encoder=ladder-short", "encoder=resnet18")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "tested on 45 clips" in refused.stderr, refused.stderr
