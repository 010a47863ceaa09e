"""What a model is trained on and scored against: the actor's intended emotion, or what raters perceived.

`train --target intended|perceived-voice|perceived-face|perceived-av --labels hard|soft`:

* `intended` is the clip's label (the emotion the actor was asked for), the default.
* `perceived-<modality>` reads the raters' votes of that modality from the store's clip table
  (stores/clip_votes.py). `--labels hard` trains on the majority (ties broken by pipeline/votes.py's keyed hash,
  seed TIE_SEED = 0); `--labels soft` on the cross-entropy to the vote distribution. Clips without votes for the
  target are left out of every split (the log says how many). The best epoch is chosen by validation UAR
  against the hard form of the trained target.

Every run is then scored on its test clips against all four targets side by side (`metrics.json["targets"]`,
`evaluate`, `report`):

* accuracy, UAR and macro-F1 against each target's hard label;
* the soft-label cross-entropy, -sum_k p_k log q_k averaged over clips (p the target's distribution: the votes, or
  one-hot for `intended`; q the model's softmax), and the distribution agreement, 1 - the Jensen-Shannon distance
  between p and q (base-2 logarithms, so the distance lies in [0, 1] and agreement 1 means identical);
* accuracy by the raters' agreement level of each perceived target (unanimous, majority, plurality, tie);
* the raters themselves on the same clips: their accuracy against the intended emotion per modality
  (pipeline/votes.py: balanced, pooled, majority), printed beside the model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.records import VOTE_MODALITIES
from pipeline.votes import AGREEMENT_LEVELS, TIE_SEED, agreement_levels, distributions, hard_labels, raters_accuracy
from stores.clip_votes import read_votes
from stores.store import FeatureStore, StoreError

TARGETS: tuple[str, ...] = ("intended", *(f"perceived-{m}" for m in VOTE_MODALITIES))
LABEL_KINDS: tuple[str, ...] = ("hard", "soft")


def modality_of(target: str) -> str | None:
    """'perceived-av' -> 'av'; None for 'intended'."""
    return target.removeprefix("perceived-") if target.startswith("perceived-") else None


def check_target(target: str, labels: str, input_kind: str = "") -> None:
    """ValueError (one line, naming the fix) for a target or label kind no run could use."""
    if target not in TARGETS:
        raise ValueError(f"--target takes {' | '.join(TARGETS)}, not '{target}'")
    if labels not in LABEL_KINDS:
        raise ValueError(f"--labels takes {' | '.join(LABEL_KINDS)}, not '{labels}'")
    if labels == "soft" and target == "intended":
        raise ValueError("--labels soft needs a perceived target (the intended emotion has no vote distribution); "
                         "use e.g. --target perceived-av --labels soft")
    if input_kind == "sequences" and target != "intended":
        raise ValueError(f"the ladder encoder trains on the intended emotion only; drop --target {target}")


@dataclass(frozen=True)
class ClipTargets:
    """Every target of every clip row of a store."""

    intended: np.ndarray  # (N,) the clip labels
    clip_ids: np.ndarray  # (N,)
    votes: dict[str, np.ndarray]  # modality -> (N, K) counts; absent when the store has no votes

    def has(self, target: str) -> np.ndarray:
        """Rows that have `target` (every row for intended; rows with votes of the modality otherwise)."""
        modality = modality_of(target)
        if modality is None:
            return np.ones(len(self.intended), bool)
        return self.votes[modality].sum(-1) > 0 if modality in self.votes else np.zeros(len(self.intended), bool)

    def hard(self, target: str) -> np.ndarray:
        """(N,) class per row; -1 where the row lacks the target."""
        modality = modality_of(target)
        if modality is None:
            return self.intended.astype(np.int64)
        if modality not in self.votes:
            return np.full(len(self.intended), -1, np.int64)
        return hard_labels(self.votes[modality], self.clip_ids, modality, TIE_SEED)

    def soft(self, target: str, num_classes: int) -> np.ndarray:
        """(N, K) target distribution per row (one-hot for intended; zeros where the row lacks the target)."""
        modality = modality_of(target)
        if modality is None:
            return np.eye(num_classes)[self.intended]
        if modality not in self.votes:
            return np.zeros((len(self.intended), num_classes))
        return distributions(self.votes[modality])


def clip_targets(store: FeatureStore, table: dict[str, np.ndarray]) -> ClipTargets:
    stored = read_votes(store.root)
    votes = {m: stored.modality(m) for m in VOTE_MODALITIES} if stored is not None else {}
    return ClipTargets(intended=np.asarray(table["label"], np.int64), clip_ids=np.asarray(table["clip_id"]), votes=votes)


def training_targets(store: FeatureStore, table: dict[str, np.ndarray], usable: np.ndarray, target: str,
                     targets: ClipTargets | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(usable rows that have the target, hard labels of every row, notes for the log). A perceived target on a
    store without its votes is refused (StoreError), naming how to add them. `targets`: the store's, when the
    caller read them already (a run reads them once: encoders/rows.py)."""
    targets = targets if targets is not None else clip_targets(store, table)
    has = targets.has(target)
    if target != "intended" and not has.any():
        raise StoreError(f"store '{store.location}' holds no {modality_of(target)} votes for --target {target}; extract with "
                         "--meta pointing at the corpus's tabulatedVotes.csv (or a manifest with votes_* columns)")
    notes = []
    if (usable & ~has).any():
        notes.append(f"{int((usable & ~has).sum())} usable clip(s) without {modality_of(target)} votes left out (--target {target})")
    return usable & has, targets.hard(target), notes


def soft_targets(store: FeatureStore, table: dict[str, np.ndarray], rows: dict[str, np.ndarray], target: str,
                 targets: ClipTargets | None = None) -> dict[str, torch.Tensor]:
    """Split name -> (rows, K) float32 vote distributions, for `--labels soft` (`targets`: as training_targets)."""
    dist = (targets if targets is not None else clip_targets(store, table)).soft(target, len(store.class_names))
    return {name: torch.as_tensor(dist[r], dtype=torch.float32) for name, r in rows.items()}


def batch_target(soft: dict[str, torch.Tensor], labels: torch.Tensor, positions: np.ndarray, split: str = "train") -> torch.Tensor:
    """What the loss compares a training batch's logits with: the hard labels, or (soft) the vote distributions."""
    if not soft:
        return labels
    return soft[split][torch.as_tensor(positions, dtype=torch.long)].to(labels.device, non_blocking=True)


# ---------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def predict_log_probabilities(model: torch.nn.Module, data, split: str, plan, batch_size: int, ablation: str | None = None) -> np.ndarray:
    """(clips of `split`, K) log-softmax of the model, in the split's order (float64); one process."""
    from encoders.loader import Loader, LoaderConfig
    from encoders.device import prepare

    loader = Loader(data.splits, LoaderConfig(workers=0), plan.device)
    model.eval()
    out = np.zeros((len(data.splits[split]), len(data.class_names)))
    try:
        for raw, _, positions in loader.batches(split, batch_size):
            with plan.autocast():
                logits = model(*prepare(data.recipe, raw, plan, ablation)).float()
            out[positions] = torch.log_softmax(logits, dim=1).double().cpu().numpy()
    finally:
        loader.close()
    return out


def js_agreement(p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """1 - Jensen-Shannon distance (base 2) between each row of p and of exp(log_q)."""
    q = np.exp(log_q)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> np.ndarray:
        return np.sum(np.where(a > 0, a * (np.log2(np.where(a > 0, a, 1)) - np.log2(np.where(m > 0, m, 1))), 0.0), axis=-1)

    divergence = np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0)
    return 1.0 - np.sqrt(divergence)


def score_targets(log_q: np.ndarray, targets: ClipTargets, rows: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """The model's test predictions (log-probabilities of clip `rows`) against every target, and the raters."""
    from encoders.metrics import classification_metrics

    rows = np.asarray(rows, np.int64)
    predicted = log_q.argmax(1)
    intended = targets.intended[rows]
    scores: dict[str, Any] = {}
    for target in TARGETS:
        has = targets.has(target)[rows]
        if not has.any():
            scores[target] = {"n": 0}
            continue
        truth = targets.hard(target)[rows]
        p = targets.soft(target, len(class_names))[rows]
        metrics = classification_metrics(truth[has], predicted[has], class_names)
        entry = {k: metrics[k] for k in ("accuracy", "uar", "macro_f1", "n")}
        entry["cross_entropy"] = float(np.mean(-np.sum(p[has] * log_q[has], axis=1)))
        entry["agreement"] = float(np.mean(js_agreement(p[has], log_q[has])))
        modality = modality_of(target)
        if modality is not None:
            levels = agreement_levels(targets.votes[modality][rows])
            entry["by_agreement"] = {
                level: {"n": int(np.sum(levels == level)),
                        "accuracy": float(np.mean(predicted[levels == level] == truth[levels == level])) if np.any(levels == level) else None,
                        "intended_accuracy": float(np.mean(predicted[levels == level] == intended[levels == level])) if np.any(levels == level) else None}
                for level in AGREEMENT_LEVELS}
        scores[target] = entry
    raters = {m: raters_accuracy(intended, targets.votes[m][rows], targets.clip_ids[rows], m) for m in targets.votes}
    return {"test": scores, "raters": raters}


def score_run(model: torch.nn.Module, data, plan, config, location: str, ablation: str | None = None, *,
              batch_size: int | None = None) -> dict[str, Any]:
    """metrics.json's "targets": what was trained, and the test split scored against all four targets (the
    store's targets as the run read them, `data.targets`, else read now). `batch_size`: samples per forward pass
    (train's per-pass size on a CPU, so scoring holds no more activations than training); default the run's batch."""
    targets = getattr(data, "targets", None)
    if targets is None:
        store = FeatureStore.open(location)
        targets = clip_targets(store, store.clip_table())
    log_q = predict_log_probabilities(model, data, "test", plan, batch_size or config.batch_size, ablation)
    scored = score_targets(log_q, targets, data.splits["test"].rows, data.class_names)
    return {"trained": {"target": config.target, "labels": config.labels, "tie_seed": TIE_SEED}, **scored}


def target_lines(targets: dict[str, Any], model_accuracy: float | None = None) -> list[str]:
    """Lines for `train` and `evaluate`: every target side by side, the soft scores, agreement levels, raters."""
    if not targets:
        return []
    test, trained = targets["test"], targets.get("trained", {})
    lines = [f"  trained on: {trained.get('target', 'intended')} ({trained.get('labels', 'hard')} labels); test scored against every target:"]
    for target, s in test.items():
        if not s.get("n"):
            lines.append(f"    {target:16s} no votes on the test clips")
            continue
        lines.append(f"    {target:16s} accuracy {s['accuracy']:.3f}  UAR {s['uar']:.3f}  macro-F1 {s['macro_f1']:.3f}  "
                     f"soft CE {s['cross_entropy']:.3f}  agreement (1-JSD) {s['agreement']:.3f}  on {s['n']} clips")
        levels = s.get("by_agreement", {})
        shown = [f"{k} {v['accuracy']:.2f} (n={v['n']})" for k, v in levels.items() if v["n"]]
        if shown:
            lines.append("      by raters' agreement: " + ", ".join(shown))
    raters = targets.get("raters", {})
    if raters:
        intended = test.get("intended", {})
        lines.append("  raters against the intended emotion on these clips (balanced / pooled / majority vote): "
                     + "; ".join(f"{m} {100 * r['balanced']:.1f} / {100 * r['pooled']:.1f} / {100 * r['majority']:.1f} %"
                                 for m, r in raters.items() if r.get("clips"))
                     + f"; the model {100 * intended.get('uar', 0):.1f} % UAR / {100 * intended.get('accuracy', 0):.1f} % accuracy")
    return lines
