"""Is configuration A better than B? Matched-pairs tests over replicates, as seed 002 reports them.

Goncalves & Busso compare each model with its baselines by a one-tailed matched-pairs t-test over 20 runs
(p < 0.05). A "pair" is one replicate of each configuration on the same data: the same actor fold and the
same seed (so the same split and, where the code allows, the same initialisation order). Runs that have no
partner are named and left out; they never pair with a replicate of another fold or seed.

The Wilcoxon signed-rank test is reported beside the t-test: with few replicates, accuracy differences are
far from normal, and a reader should see whether the verdict depends on that assumption. Both come from
scipy; nothing here re-implements a distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

REPLICATE_KEYS = ("fold", "seed")
"""What tells two runs of one configuration apart; two configurations are paired on these."""


class CompareError(ValueError):
    """A comparison that cannot be made as asked; the message says what is missing."""


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


def replicate_of(run: dict[str, Any]) -> tuple[str, str]:
    return tuple(_text(run_field(run, key)) for key in REPLICATE_KEYS)  # type: ignore[return-value]


@dataclass
class Comparison:
    a: str
    b: str
    metric: str
    replicates: list[tuple[str, str]]  # (fold, seed) of each matched pair
    values_a: list[float]
    values_b: list[float]
    unmatched_a: list[tuple[str, str]] = field(default_factory=list)
    unmatched_b: list[tuple[str, str]] = field(default_factory=list)
    t_statistic: float = float("nan")
    t_p: float = float("nan")  # one-tailed: H1 mean(A - B) > 0
    wilcoxon_p: float = float("nan")  # one-tailed, same H1

    @property
    def mean_difference(self) -> float:
        return float(np.mean(np.subtract(self.values_a, self.values_b)))

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "metric": self.metric, "n_pairs": len(self.replicates),
            "replicates": [dict(zip(REPLICATE_KEYS, r)) for r in self.replicates],
            "a_values": self.values_a, "b_values": self.values_b, "mean_difference": self.mean_difference,
            "t_statistic": self.t_statistic, "t_test_p_one_tailed": self.t_p, "wilcoxon_p_one_tailed": self.wilcoxon_p,
            "unmatched_a": [dict(zip(REPLICATE_KEYS, r)) for r in self.unmatched_a],
            "unmatched_b": [dict(zip(REPLICATE_KEYS, r)) for r in self.unmatched_b],
        }

    def lines(self) -> list[str]:
        shown = ", ".join(f"fold {f} seed {s}" for f, s in self.replicates)
        out = [
            f"A = {self.a}; B = {self.b}; test {self.metric}, H1: A > B",
            f"matched replicates (same fold and seed): {len(self.replicates)}: {shown}",
            f"mean A {np.mean(self.values_a):.4f}, mean B {np.mean(self.values_b):.4f}, mean difference {self.mean_difference:+.4f}",
            f"one-tailed matched-pairs t-test: t = {self.t_statistic:.3f}, p = {self.t_p:.4g}"
            + (" (significant at 0.05)" if self.t_p < 0.05 else ""),
            f"one-tailed Wilcoxon signed-rank test: p = {self.wilcoxon_p:.4g}",
        ]
        for side, missing in (("A", self.unmatched_a), ("B", self.unmatched_b)):
            if missing:
                out.append(f"left out, no partner in the other configuration ({side}): "
                           + ", ".join(f"fold {f} seed {s}" for f, s in missing))
        return out


def compare_runs(runs: list[dict[str, Any]], a: str, b: str, metric: str = "macro_f1") -> Comparison:
    """Test whether the runs selected by `a` beat those selected by `b` on test `metric`, pairing replicates."""
    side_runs = {}
    for name, text in (("A", a), ("B", b)):
        selector = Selector.parse(text)
        chosen = [run for run in runs if selector.matches(run) and not run.get("ablate")]
        if not chosen:
            raise CompareError(f"selector {name} '{text}' matches no run")
        by_replicate: dict[tuple[str, str], dict] = {}
        for run in chosen:
            key = replicate_of(run)
            if key in by_replicate:
                raise CompareError(f"selector {name} '{text}' matches two runs for fold {key[0]} seed {key[1]} "
                                   f"({by_replicate[key]['path']}, {run['path']}); add key=value pairs to narrow it")
            if run.get("test", {}).get(metric) is None:
                raise CompareError(f"run {run['path']} has no test {metric}")
            by_replicate[key] = run
        side_runs[name] = by_replicate
    matched = sorted(set(side_runs["A"]) & set(side_runs["B"]))
    unmatched_a = sorted(set(side_runs["A"]) - set(matched))
    unmatched_b = sorted(set(side_runs["B"]) - set(matched))
    if len(matched) < 2:
        missing = ", ".join(f"fold {f} seed {s} ({'B' if k in side_runs['A'] else 'A'} missing)"
                            for k in unmatched_a + unmatched_b for f, s in [k])
        raise CompareError(f"{len(matched)} matched replicate(s) of '{a}' and '{b}', a paired test needs 2 or more; "
                           f"unpaired: {missing or 'none'}; run the missing fold/seed combinations")
    result = Comparison(
        a, b, metric, matched,
        [float(side_runs["A"][k]["test"][metric]) for k in matched],
        [float(side_runs["B"][k]["test"][metric]) for k in matched],
        unmatched_a, unmatched_b,
    )
    differences = np.subtract(result.values_a, result.values_b)
    if np.all(differences == 0):
        result.t_statistic, result.t_p, result.wilcoxon_p = 0.0, 0.5, 0.5  # no evidence either way
        return result
    t = stats.ttest_rel(result.values_a, result.values_b, alternative="greater")
    result.t_statistic, result.t_p = float(t.statistic), float(t.pvalue)
    result.wilcoxon_p = float(stats.wilcoxon(result.values_a, result.values_b, alternative="greater", zero_method="zsplit").pvalue)
    return result


def _text(value: Any) -> str:
    """How a selector spells a value: none, true/false, else str()."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
