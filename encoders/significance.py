"""Is configuration A better than B? The statistics of `report --compare` and of a study's table, in one place.

What a reviewer accepts, and why each choice is made:

* **The fold is the unit of replication.** Seeds of one fold share its test clips, so they are not independent
  replicates: a run's seeds are averaged within its fold, and A and B are paired by fold only ("seed 1" of two
  architectures pairs nothing). Folds A or B lack are named and left out.
* **Corrected resampled t-test** (Nadeau & Bengio, 2003, "Inference for the generalization error"). The folds of
  k-fold cross-validation share (k-2)/(k-1) of their training data, so their differences are positively
  correlated and the ordinary paired t-test is anti-conservative. The variance of the mean difference over J
  folds is inflated from s^2/J to (1/J + n_test/n_train) s^2; t has J - 1 degrees of freedom. The plain paired
  t-test over the same fold means is printed beside it, for reference only.
* **Two-sided by default.** `alternative="greater"` (A > B) or `"less"` only for a hypothesis stated before the
  runs were seen.
* **Holm's step-down correction** over all comparisons of one report (several metrics, or a study's arms x
  metrics): it controls the family-wise error rate with no assumption about how the tests depend on each other.
* **Effect size with a 95 % confidence interval**: the mean difference A - B of the metric (its own units: 0.05 is
  five points of accuracy), and a percentile interval from a bootstrap that resamples *speakers* within each
  test fold (clips of one speaker are not independent), from the runs' per-clip test predictions
  (`predictions.json`). Runs without them get no interval, and the output says so. The interval reflects which
  speakers happened to be tested, not training randomness (the t-test's fold variance carries that); with fewer
  than 5 test speakers in a fold it is flagged as too narrow.
* **Same test clips or no comparison.** Two runs of one fold must have been tested on the same clips (the ladder
  drops clips without LLDs or embeddings, a store may have grown): otherwise `TestClipsDiffer`.

Everything comes from numpy and scipy.stats; Holm is five lines (statsmodels is not a dependency).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from encoders.predictions import of_run as predictions_of
from stores.splits import VAL_SHARE

ALTERNATIVES = ("two-sided", "greater", "less")
ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000
MIN_SPEAKERS = 5  # test speakers per fold below which the bootstrap interval is flagged as too narrow
HYPOTHESIS = {"two-sided": "A != B", "greater": "A > B", "less": "A < B"}


class CompareError(ValueError):
    """A comparison that cannot be made as asked; the message says what is missing."""


class TestClipsDiffer(CompareError):
    """Two runs of one fold were tested on different clips: their numbers are not comparable."""

    __test__ = False  # not a pytest class


# ---- selecting runs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selector:
    """`encoder=ladder,modality=av`: the runs whose fields (top level or config) have these values."""

    text: str
    conditions: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> "Selector":
        conditions = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise CompareError(f"'{text}': each part must be key=value (e.g. encoder=resnet18,modality=av)")
            conditions.append((key.strip(), value.strip()))
        if not conditions:
            raise CompareError("an empty selector; give key=value pairs such as encoder=resnet18,modality=av")
        return cls(text, tuple(conditions))

    def matches(self, run: dict[str, Any]) -> bool:
        return all(_text(run_field(run, key)) == value for key, value in self.conditions)


def run_field(run: dict[str, Any], key: str) -> Any:
    """A run's value for `key`: its own metrics.json field, else its training configuration's."""
    if key in run:
        return run[key]
    return run.get("config", {}).get(key)


def fold_of(run: dict[str, Any]) -> str:
    """'2/5' for round 2 of 5-fold cross-validation; 'none' for a run on the store's split."""
    return _text(run.get("fold"))


# ---- the tests themselves ----------------------------------------------------------------------------------
def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: the i-th smallest p times (m - i), made monotone, at most 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted, running = np.empty_like(p), 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def corrected_t_test(differences: Sequence[float], test_train_ratio: float, alternative: str = "two-sided") -> tuple[float, int, float]:
    """(t, df, p) of Nadeau & Bengio's corrected resampled t-test over J fold differences A - B."""
    d = np.asarray(differences, dtype=np.float64)
    j = len(d)
    if j < 2:
        raise CompareError(f"{j} fold(s): the corrected t-test needs 2 or more")
    return _t_test(d, 1.0 / j + test_train_ratio, alternative)


def naive_paired_p(differences: Sequence[float], alternative: str = "two-sided") -> float:
    """The uncorrected paired t-test over the same differences (s^2 / J): anti-conservative for k-fold folds."""
    d = np.asarray(differences, dtype=np.float64)
    return _t_test(d, 1.0 / len(d), alternative)[2]


def _t_test(d: np.ndarray, factor: float, alternative: str) -> tuple[float, int, float]:
    """t = mean / sqrt(factor * s^2) with len(d) - 1 degrees of freedom. Differences that do not vary (up to
    rounding) give no t: p = 1 (0.5 one-sided), no evidence either way."""
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return 0.0, len(d) - 1, 1.0 if alternative == "two-sided" else 0.5
    t = float(d.mean() / np.sqrt(factor * sd**2))
    return t, len(d) - 1, _p_from_t(t, len(d) - 1, alternative)


def _p_from_t(t: float, df: int, alternative: str) -> float:
    if alternative == "greater":
        return float(stats.t.sf(t, df))
    if alternative == "less":
        return float(stats.t.cdf(t, df))
    return float(2 * stats.t.sf(abs(t), df))


def metric_from_confusion(confusion: np.ndarray, metric: str) -> np.ndarray:
    """`metric` from confusion matrices (..., K, K), rows true, as encoders.metrics defines it (0 for 0/0)."""
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    support, predicted = c.sum(-1), c.sum(-2)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    total = c.sum((-2, -1))
    accuracy = np.divide(tp.sum(-1), total, out=np.zeros_like(total), where=total > 0)
    table = {"accuracy": accuracy, "micro_f1": accuracy, "micro_precision": accuracy, "micro_recall": accuracy,
             "uar": recall.mean(-1), "macro_recall": recall.mean(-1), "macro_precision": precision.mean(-1), "macro_f1": f1.mean(-1)}
    if metric not in table:
        raise CompareError(f"no bootstrap for metric '{metric}'; choose one of {', '.join(table)}")
    return table[metric]


# ---- comparing two sets of runs ----------------------------------------------------------------------------
@dataclass
class Comparison:
    a: str
    b: str
    metric: str
    alternative: str
    folds: list[str]  # matched folds, each the unit of replication
    values_a: list[float]  # per fold: the mean over that fold's seeds
    values_b: list[float]
    seeds_a: list[int]  # seeds averaged in each fold
    seeds_b: list[int]
    test_train_ratio: float
    unmatched_a: list[str] = field(default_factory=list)
    unmatched_b: list[str] = field(default_factory=list)
    t_statistic: float = float("nan")
    df: int = 0
    p: float = float("nan")  # corrected resampled t-test
    p_naive: float = float("nan")  # plain paired t-test over folds, for reference
    p_holm: float = float("nan")  # set by compare_metrics / the study over its family of tests
    family: int = 1  # how many tests p_holm was corrected over
    ci: tuple[float, float] | None = None  # 95 % bootstrap interval of the mean difference
    notes: list[str] = field(default_factory=list)

    @property
    def mean_difference(self) -> float:
        return float(np.mean(np.subtract(self.values_a, self.values_b)))

    @property
    def significant(self) -> bool:
        return bool(self.p_holm < ALPHA)

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "metric": self.metric, "alternative": self.alternative, "hypothesis": HYPOTHESIS[self.alternative],
            "n_folds": len(self.folds),
            "folds": [{"fold": f, "a": va, "b": vb, "seeds_a": sa, "seeds_b": sb}
                      for f, va, vb, sa, sb in zip(self.folds, self.values_a, self.values_b, self.seeds_a, self.seeds_b)],
            "mean_a": float(np.mean(self.values_a)), "mean_b": float(np.mean(self.values_b)), "mean_difference": self.mean_difference,
            "ci95": list(self.ci) if self.ci else None, "ci_method": f"speaker-level bootstrap within folds, {BOOTSTRAP_RESAMPLES} resamples",
            "test": "corrected resampled t-test (Nadeau & Bengio 2003)", "test_train_ratio": self.test_train_ratio,
            "t_statistic": self.t_statistic, "df": self.df, "p": self.p, "p_holm": self.p_holm, "holm_family": self.family,
            "significant": self.significant, "p_naive_paired": self.p_naive,
            "unmatched_a": self.unmatched_a, "unmatched_b": self.unmatched_b, "notes": self.notes,
        }

    def lines(self) -> list[str]:
        ci = f"95 % CI [{self.ci[0]:+.4f}, {self.ci[1]:+.4f}] (speaker-level bootstrap)" if self.ci else "no CI (see notes)"
        seeds = "/".join(str(n) for n in sorted(set(self.seeds_a + self.seeds_b)))
        out = [
            f"A = {self.a}; B = {self.b}; test {self.metric}; H1: {HYPOTHESIS[self.alternative]} ({self.alternative})",
            f"folds matched: {len(self.folds)} ({', '.join(self.folds)}); the fold is the replicate, its seeds ({seeds} per fold) averaged",
            f"mean A {np.mean(self.values_a):.4f}, mean B {np.mean(self.values_b):.4f}, difference A - B {self.mean_difference:+.4f}, {ci}",
            f"corrected resampled t-test (Nadeau & Bengio 2003, n_test/n_train = {self.test_train_ratio:.3f}): "
            f"t = {self.t_statistic:.3f}, df = {self.df}, p = {self.p:.4g}",
            f"Holm-adjusted over {self.family} test(s): p = {self.p_holm:.4g}" + (" (significant at 0.05)" if self.significant else " (not significant at 0.05)"),
            f"for reference, the uncorrected paired t-test over folds: p = {self.p_naive:.4g} (ignores that folds share training data)",
        ]
        for side, missing in (("A", self.unmatched_a), ("B", self.unmatched_b)):
            if missing:
                out.append(f"left out, no partner in the other configuration ({side}): fold " + ", ".join(missing))
        out += [f"note: {note}" for note in self.notes]
        return out


def compare_runs(runs: list[dict[str, Any]], a: str, b: str, metric: str = "macro_f1", alternative: str = "two-sided",
                 *, bootstrap_seed: int = 0) -> Comparison:
    """Test A against B on test `metric`, folds as replicates (seeds averaged within a fold); Holm is left to the
    caller (`compare_metrics`), so `p_holm` is `p` here."""
    if alternative not in ALTERNATIVES:
        raise CompareError(f"--alternative '{alternative}': choose {', '.join(ALTERNATIVES)}")
    sides = {name: _by_fold(runs, name, text, metric) for name, text in (("A", a), ("B", b))}
    matched = sorted(set(sides["A"]) & set(sides["B"]), key=_fold_order)
    unmatched_a = sorted(set(sides["A"]) - set(matched), key=_fold_order)
    unmatched_b = sorted(set(sides["B"]) - set(matched), key=_fold_order)
    if len(matched) < 2:
        unpaired = ", ".join([f"{f} (B missing)" for f in unmatched_a] + [f"{f} (A missing)" for f in unmatched_b])
        raise CompareError(f"{len(matched)} fold(s) with runs of both '{a}' and '{b}'; the fold is the replicate and a test "
                           f"needs 2 or more (sweep --folds 5); unpaired: {unpaired or 'none'}")
    notes = _check_test_clips(matched, sides)
    fold_runs = [(sides["A"][f], sides["B"][f]) for f in matched]
    values = [[float(np.mean([run["test"][metric] for run in group])) for group in pair] for pair in fold_runs]
    ratio, ratio_note = _test_train_ratio([run for pair in fold_runs for group in pair for run in group], matched)
    notes += [ratio_note] if ratio_note else []
    result = Comparison(a, b, metric, alternative, matched, [v[0] for v in values], [v[1] for v in values],
                        [len(p[0]) for p in fold_runs], [len(p[1]) for p in fold_runs], ratio, unmatched_a, unmatched_b, notes=notes)
    differences = np.subtract(result.values_a, result.values_b)
    result.t_statistic, result.df, result.p = corrected_t_test(differences, ratio, alternative)
    result.p_naive, result.p_holm = naive_paired_p(differences, alternative), result.p
    result.ci, ci_note = bootstrap_ci(fold_runs, metric, seed=bootstrap_seed)
    if ci_note:
        result.notes.append(ci_note)
    return result


def compare_metrics(runs: list[dict[str, Any]], a: str, b: str, metrics: Sequence[str], alternative: str = "two-sided") -> list[Comparison]:
    """`compare_runs` for each metric, with Holm's correction over the metrics (one family)."""
    results = [compare_runs(runs, a, b, m, alternative) for m in dict.fromkeys(metrics)]
    adjust(results)
    return results


def adjust(results: Sequence[Comparison]) -> None:
    """Set `p_holm` of every comparison, corrected over all of them."""
    for result, p in zip(results, holm([r.p for r in results])):
        result.p_holm, result.family = p, len(results)


def _by_fold(runs: list[dict[str, Any]], name: str, text: str, metric: str) -> dict[str, list[dict[str, Any]]]:
    selector = Selector.parse(text)
    chosen = [run for run in runs if selector.matches(run) and not run.get("ablate")]
    if not chosen:
        raise CompareError(f"selector {name} '{text}' matches no run")
    folds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: dict[tuple[str, str], str] = {}
    for run in chosen:
        key = (fold_of(run), _text(run_field(run, "seed")))
        if key in seen:
            raise CompareError(f"selector {name} '{text}' matches two runs for fold {key[0]} seed {key[1]} "
                               f"({seen[key]}, {run.get('path')}); add key=value pairs to narrow it")
        if run.get("test", {}).get(metric) is None:
            raise CompareError(f"run {run.get('path')} has no test {metric}")
        seen[key] = str(run.get("path"))
        folds[key[0]].append(run)
    return folds


def _fold_order(fold: str) -> tuple[int, str]:
    head = fold.split("/")[0]
    return (int(head), fold) if head.isdigit() else (-1, fold)


def test_clips(run: dict[str, Any]) -> list[str] | None:
    """The clip ids a run was tested on: its predictions.json, else its partition.json; None if neither."""
    predictions = predictions_of(run)
    if predictions is not None:
        return list(predictions["clip_id"])
    recorded = run.get("partition")
    if isinstance(recorded, dict) and run.get("path"):
        try:
            return list(json.loads((Path(run["path"]).parent / str(recorded.get("file"))).read_text())["test"]["clips"])
        except (OSError, ValueError, KeyError):
            return None
    return None


test_clips.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _check_test_clips(matched: list[str], sides: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    """Raise TestClipsDiffer when two runs of a fold saw different test clips; notes for runs that cannot be checked."""
    unknown = []
    for fold in matched:
        reference: tuple[str, set[str]] | None = None
        for run in sides["A"][fold] + sides["B"][fold]:
            clips = test_clips(run)
            if clips is None:
                unknown.append(str(run.get("path")))
                continue
            if reference is None:
                reference = (str(run.get("path")), set(clips))
            elif set(clips) != reference[1]:
                only_a, only_b = sorted(reference[1] - set(clips)), sorted(set(clips) - reference[1])
                example = (only_a or only_b)[0]
                raise TestClipsDiffer(
                    f"fold {fold}: {reference[0]} was tested on {len(reference[1])} clips and {run.get('path')} on {len(clips)}, "
                    f"{len(only_a) + len(only_b)} differ (e.g. {example}); compare runs tested on the same clips (same store, "
                    "split and usable clips: a ladder run drops clips without LLDs or embeddings)")
    return [f"{len(unknown)} run(s) record no test clips (made before partition.json), so equal test sets are not checked: "
            + ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")] if unknown else []


def _test_train_ratio(runs: list[dict[str, Any]], folds: list[str]) -> tuple[float, str]:
    """n_test / n_train of the runs (clip counts in metrics.json); else what FOLD_RULE gives for k folds, noted."""
    ratios = [run["clips"]["test"] / run["clips"]["train"] for run in runs
              if isinstance(run.get("clips"), dict) and run["clips"].get("train") and run["clips"].get("test") is not None]
    if ratios:
        return float(np.mean(ratios)), ""
    k = int(folds[0].split("/")[1]) if "/" in folds[0] else 5
    ratio = 1.0 / ((k - 1) * (1.0 - VAL_SHARE))
    return ratio, f"the runs record no clip counts; n_test/n_train = {ratio:.3f} taken from the {k}-fold rule"


# ---- the bootstrap over speakers ---------------------------------------------------------------------------
def bootstrap_ci(fold_runs: list[tuple[list[dict], list[dict]]], metric: str, *, seed: int = 0,
                 resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95) -> tuple[tuple[float, float] | None, str]:
    """Percentile interval of the mean over folds of (mean over A's seeds - mean over B's seeds) of `metric`,
    resampling each fold's test speakers with replacement (all of a speaker's clips together)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    fewest = None
    for runs_a, runs_b in fold_runs:
        predictions = [predictions_of(run) for run in runs_a + runs_b]
        if any(p is None for p in predictions):
            missing = next(run.get("path") for run, p in zip(runs_a + runs_b, predictions) if p is None)
            return None, f"no confidence interval: {missing} has no predictions.json (made before runs wrote per-clip predictions)"
        clips = predictions[0]["clip_id"]
        speakers = sorted(set(predictions[0]["speaker"]))
        fewest = len(speakers) if fewest is None else min(fewest, len(speakers))
        k = len(predictions[0]["class_names"])
        counts = rng.multinomial(len(speakers), np.full(len(speakers), 1.0 / len(speakers)), size=resamples)  # (B, speakers)
        fold_diff = np.zeros(resamples)
        for side, runs in ((1.0, runs_a), (-1.0, runs_b)):
            for p in predictions[:len(runs_a)] if side > 0 else predictions[len(runs_a):]:
                per_speaker = _speaker_confusions(p, clips, speakers, k)  # (speakers, K*K)
                confusion = (counts @ per_speaker).reshape(resamples, k, k)
                fold_diff += side * metric_from_confusion(confusion, metric) / len(runs)
        total += fold_diff / len(fold_runs)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(total, [tail, 100 - tail])
    note = "" if fewest is None or fewest >= MIN_SPEAKERS else (
        f"a fold has only {fewest} test speaker(s): resampling so few understates the uncertainty, read the interval as too narrow")
    return (float(low), float(high)), note


def _speaker_confusions(predictions: dict, clips: list[str], speakers: list[str], k: int) -> np.ndarray:
    """Per speaker, the run's confusion counts (flattened), with its clips aligned to `clips`."""
    where = {c: i for i, c in enumerate(predictions["clip_id"])}
    order = np.asarray([where[c] for c in clips])
    speaker = np.asarray(predictions["speaker"])[order]
    cell = np.asarray(predictions["label"])[order] * k + np.asarray(predictions["predicted"])[order]
    index = {s: i for i, s in enumerate(speakers)}
    out = np.zeros((len(speakers), k * k))
    np.add.at(out, (np.asarray([index[s] for s in speaker]), cell), 1)
    return out


def _text(value: Any) -> str:
    """How a selector spells a value: none, true/false, else str()."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
