"""The audiovisual ladder network of Goncalves & Busso (seed 002), over ComParE LLD and face-embedding sequences.

Structure (the poster's; sizes and λ values it does not give are ours, stated):
* Inputs: the ComParE LLD frames (B, F, 130), valid up to each clip's `lld_frames` (32 ms windows, 16 ms step),
  and the per-frame face embeddings (B, T, D), valid where a face was found. Each frame is z-scored with the
  training split's statistics (`fit_input_stats`).
* Layer 0 of each modality is learned from the whole sequence, not from fixed means: a learned projection of
  every frame (of each 4 LLD frames together, a strided convolution), a bidirectional GRU over the valid steps
  and masked attention pooling (`SequenceEncoder`), batch-normalised
  without affine like every ladder layer. A clip with no valid step (a modality ablated, `--ablate`) gets
  z0 = 0, the training average of that layer.
* Above it, ladder layers (Rasmus et al., 2015): z = BN(W h) without affine, h = ReLU(γ ⊙ (z + β)); an encoder
  per modality and a cross-modal encoder on their joined top layers.
* Two passes: a clean one, and a noisy one with Gaussian noise of SD `noise` added to the z-scored input
  frames and to every z. Classification heads on the noisy pass give the supervised loss, the mean of the AV,
  audio and video heads' cross-entropies over the labelled clips; the clean AV head predicts.
* Decoders reconstruct each layer's clean z from the noisy pass, top-down: u = BN(V ẑ_above), and ẑ = g(z̃, u)
  combines it with a lateral skip z̃. The AV decoder rebuilds the cross-modal layers with skips from the noisy
  cross-modal encoder; below it, the video decoder (A→V) rebuilds the video encoder's layers with skips from the
  *audio* encoder, and the audio decoder (V→A) the audio layers with skips from the video encoder.
  `cross_skips=False` (an ablation) gives each modality's decoder its own encoder's skips.
* g is Rasmus et al.'s "vanilla" combinator by default, per unit: ẑ_i = (z̃_i − μ_i(u_i)) υ_i(u_i) + μ_i(u_i),
  μ_i(u) = a1 σ(a2 u + a3) + a4 u + a5, υ_i(u) = a6 σ(a7 u + a8) + a9 u + a10. Unit i sees only its own skip
  value, so denoising has to come from the top-down signal (across a cross-modal skip, unit i of the audio layer
  informs unit i of the video layer: the two encoders learn that alignment). `combinator="dense"` is the earlier form,
  ẑ = W z̃ + a ⊙ u + b ⊙ (W z̃) ⊙ u + c with a dense W, through which a layer can denoise from its skip alone.
* Unsupervised loss: λ_l-weighted reconstruction errors (mean squared, per layer) of layers 0 and up, the AV
  decoder's plus half of the A→V and V→A decoders'. Deviation from Rasmus: the bottom target is the learned
  layer 0 (the sequence summary), not the input frames themselves.

Trained by encoders/train.py like every encoder: called with `labels=` the network returns its own objective
(`own_objective`); called without, the clean AV head's logits. Every head returns logits; none applies a softmax.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from encoders.registry import register_encoder

LLD_DIM = 130  # ComParE_2016's 65 LLDs and their deltas (pipeline/compare.py)


@dataclass(frozen=True)
class LadderConfig:
    """The ladder's own settings (`cli.py train --encoder ladder` options; TrainConfig.encoder_options).

    Noise 0.3 is Rasmus et al.'s; one λ for every layer (the poster gives none) unless `lambdas` lists one per
    depth (0 = the sequence summary). ValueError for values no run could use."""

    modality_layers: tuple[int, ...] = (256, 128)
    cross_layers: tuple[int, ...] = (128,)
    sequence_width: int = 128  # layer 0: the learned summary of each modality's sequence
    lld_stride: int = 4  # LLD frames per GRU step (4 x 16 ms); every face-embedding step is one
    noise: float = 0.3
    lambdas: tuple[float, ...] = (1.0,)  # λ_l by depth from the input up; the last repeats
    combinator: str = "vanilla"  # vanilla (Rasmus et al.'s, per unit) | dense (a dense map of the skip)
    cross_skips: bool = True  # False: ablation, each modality decoder reads its own encoder
    reconstruction: bool = True  # False: ablation, supervised loss only

    def __post_init__(self) -> None:
        if self.noise < 0 or not self.lambdas or min(self.lambdas) < 0:
            raise ValueError(f"ladder noise {self.noise:g} / lambdas {list(self.lambdas)}: give non-negative numbers, e.g. --noise 0.3 --lambdas 1,1,0.1")
        if self.combinator not in COMBINATORS:
            raise ValueError(f"ladder combinator '{self.combinator}' is unknown; choose {' | '.join(COMBINATORS)}")
        if self.sequence_width < 2 or self.lld_stride < 1 or min((*self.modality_layers, *self.cross_layers), default=1) < 1:
            raise ValueError("ladder layer widths and the LLD stride must be positive (and the sequence width at least 2)")

    def lam(self, depth: int) -> float:
        return self.lambdas[min(depth, len(self.lambdas) - 1)]


def batch_norm(x: torch.Tensor) -> torch.Tensor:
    """Batch statistics, no affine, running statistics untouched (those are the clean pass's, for inference)."""
    return F.batch_norm(x, None, None, training=True)


class SequenceEncoder(nn.Module):
    """(B, L, D) frames and a (B, L) validity mask -> (B, width): a learned projection of each group of `stride`
    frames (a strided convolution: every frame counts, in its order), a bidirectional GRU over the groups, and
    attention pooling.

    The GRU runs up to each clip's last valid group (packed: the LLDs' zero padding costs nothing); invalid
    frames are zeros, a group is valid when any of its frames is, and pooling weighs the valid groups only.
    The GRU runs in float32 under autocast too (cuDNN's RNN kernels and packed sequences)."""

    def __init__(self, dim: int, width: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.project = nn.Conv1d(dim, width, kernel_size=stride, stride=stride)
        self.gru = nn.GRU(width, width // 2, batch_first=True, bidirectional=True)
        self.score = nn.Linear(2 * (width // 2), 1)
        self.width = 2 * (width // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = mask.any(0).nonzero()
        keep = int(valid.max()) + 1 if len(valid) else 1
        x, mask = x[:, :keep], mask[:, :keep]  # the batch's common padding: never read
        pad = -x.shape[1] % self.stride
        x, mask = F.pad(x * mask[..., None], (0, 0, 0, pad)), F.pad(mask, (0, pad))
        mask = mask.unflatten(1, (-1, self.stride)).any(2)
        steps = torch.arange(mask.shape[1], device=x.device)
        lengths = torch.where(mask, steps + 1, 0).amax(1).clamp_min(1)  # up to the last valid group
        h = F.relu(self.project(x.transpose(1, 2))).transpose(1, 2) * mask[..., None]
        with torch.autocast(x.device.type, enabled=False):
            packed = pack_padded_sequence(h.float(), lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=mask.shape[1])
        scores = self.score(out).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(scores, dim=1))  # a clip with no valid frame: all zero
        return (weights[..., None] * out).sum(1)


class LadderEncoder(nn.Module):
    """Ladder layers sizes[0] -> sizes[1] -> ...; returns every z (z[0] is the input, noise added) and the top h."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.linear = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norm = nn.ModuleList(nn.BatchNorm1d(b, affine=False) for b in sizes[1:])
        self.gamma = nn.ParameterList(nn.Parameter(torch.ones(b)) for b in sizes[1:])
        self.beta = nn.ParameterList(nn.Parameter(torch.zeros(b)) for b in sizes[1:])

    def forward(self, x: torch.Tensor, noise: float) -> tuple[list[torch.Tensor], torch.Tensor]:
        z = x + noise * torch.randn_like(x) if noise else x
        zs, h = [z], z
        for linear, norm, gamma, beta in zip(self.linear, self.norm, self.gamma, self.beta):
            if noise:
                z = batch_norm(linear(h))
                z = z + noise * torch.randn_like(z)
            else:
                z = norm(linear(h))
            zs.append(z)
            h = F.relu(gamma * (z + beta))
        return zs, h


class VanillaCombinator(nn.Module):
    """Rasmus et al.'s g(z̃, u), per unit: ẑ = (z̃ − μ(u)) ⊙ υ(u) + μ(u), with ten (width,) vectors a1..a10.

    Starts at ẑ = 0 (a2 = a7 = 1, the others 0, as in Rasmus et al.'s code); the skip and the top-down
    signal must have the same width, unit i of one meeting unit i of the other."""

    INIT = (0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)

    def __init__(self, skip: int, width: int):
        super().__init__()
        if skip != width:
            raise ValueError(f"the vanilla combinator joins units one to one; skip width {skip} != layer width {width}")
        self.a = nn.Parameter(torch.tensor(self.INIT)[:, None].repeat(1, width))  # row k-1 is a_k

    def forward(self, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        a = self.a
        mu = a[0] * torch.sigmoid(a[1] * u + a[2]) + a[3] * u + a[4]
        v = a[5] * torch.sigmoid(a[6] * u + a[7]) + a[8] * u + a[9]
        return (s - mu) * v + mu


class DenseCombinator(nn.Module):
    """ẑ = W s + a ⊙ u + b ⊙ (W s) ⊙ u + c: the lateral skip s (any width) mapped densely, then met by u."""

    def __init__(self, skip: int, width: int):
        super().__init__()
        self.skip = nn.Linear(skip, width)
        self.a = nn.Parameter(torch.ones(width))
        self.b = nn.Parameter(torch.zeros(width))

    def forward(self, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        lateral = self.skip(s)
        return lateral + self.a * u + self.b * lateral * u


COMBINATORS: dict[str, type[nn.Module]] = {"vanilla": VanillaCombinator, "dense": DenseCombinator}


class LadderDecoder(nn.Module):
    """Top-down over `targets` (widths, top first): u = BN(V signal), then one combinator per layer."""

    def __init__(self, top_in: int, targets: list[int], skips: list[int], combinator: str = "vanilla"):
        super().__init__()
        self.up = nn.ModuleList(nn.Linear(a, b) for a, b in zip([top_in, *targets[:-1]], targets))
        self.combine = nn.ModuleList(COMBINATORS[combinator](s, t) for s, t in zip(skips, targets))

    def forward(self, top: torch.Tensor, skips: list[torch.Tensor], zero: int | None = None) -> list[torch.Tensor]:
        out, signal = [], top
        for k, (up, combine, s) in enumerate(zip(self.up, self.combine, skips)):
            u = batch_norm(up(signal))
            signal = combine(torch.zeros_like(s) if k == zero else s, u)
            out.append(signal)
        return out


class LadderNetwork(nn.Module):
    """`forward(lld, lld_mask, embedding, found)` -> the clean AV head's logits; with `labels=` the training
    objective; `ladder(...)` -> everything training needs. Input statistics are buffers set from the training split."""

    own_objective = True  # encoders/train.py calls forward(..., labels=) for the loss

    def __init__(self, *, audio_dim: int, video_dim: int, num_classes: int, config: LadderConfig = LadderConfig()):
        super().__init__()
        self.config = config
        self.audio_seq = SequenceEncoder(audio_dim, config.sequence_width, config.lld_stride)
        self.video_seq = SequenceEncoder(video_dim, config.sequence_width)
        width = self.audio_seq.width
        self.audio_norm, self.video_norm = nn.BatchNorm1d(width, affine=False), nn.BatchNorm1d(width, affine=False)
        sizes = [width, *config.modality_layers]
        c_sizes = [2 * sizes[-1], *config.cross_layers]
        self.register_buffer("audio_stats", torch.stack([torch.zeros(audio_dim), torch.ones(audio_dim)]))
        self.register_buffer("video_stats", torch.stack([torch.zeros(video_dim), torch.ones(video_dim)]))
        self.audio, self.video, self.cross = LadderEncoder(sizes), LadderEncoder(sizes), LadderEncoder(c_sizes)
        self.head_av, self.head_a, self.head_v = (nn.Linear(c_sizes[-1], num_classes), nn.Linear(sizes[-1], num_classes),
                                                  nn.Linear(sizes[-1], num_classes))
        self.decode_av = LadderDecoder(num_classes, c_sizes[:0:-1], c_sizes[:0:-1], config.combinator)
        # below the AV decoder: A→V rebuilds the video layers from the audio encoder's skips, V→A the reverse
        self.decode_v = LadderDecoder(c_sizes[1], sizes[::-1], sizes[::-1], config.combinator)
        self.decode_a = LadderDecoder(c_sizes[1], sizes[::-1], sizes[::-1], config.combinator)

    @torch.no_grad()
    def fit_input_stats(self, batches: Iterable[list[torch.Tensor]]) -> None:
        """Mean and SD of every input dimension over the valid frames of the training split (batches of model inputs)."""
        sums = None
        for lld, lld_mask, video, found in batches:
            parts = []
            for x, m in ((lld, lld_mask), (video, found)):
                x, m = x.double(), m[..., None].double()
                parts.append(torch.stack([(x * m).sum((0, 1)), (x * x * m).sum((0, 1)), m.sum((0, 1)).expand(x.shape[-1])]))
            sums = parts if sums is None else [a + b for a, b in zip(sums, parts)]
        for buffer, (s, s2, n) in zip((self.audio_stats, self.video_stats), sums):
            n = n.clamp_min(1)
            mean = s / n
            sd = (s2 / n - mean**2).clamp_min(0).sqrt().clamp_min(1e-6)
            buffer.copy_(torch.stack([mean, sd]).to(buffer.dtype))

    def _layer0(self, seq: SequenceEncoder, norm: nn.BatchNorm1d, stats: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
                noise: float) -> torch.Tensor:
        """z0 of one modality: frames z-scored (noisy pass: plus noise), summarised, batch-normalised; 0 without any valid frame."""
        x = ((x.float() - stats[0]) / stats[1]) * mask[..., None]
        if noise:
            x = x + noise * torch.randn_like(x) * mask[..., None]
        summary = seq(x, mask)
        z = batch_norm(summary) if noise else norm(summary)
        return z * mask.any(1, keepdim=True)

    def _encode(self, lld, lld_mask, video, found, noise: float) -> dict:
        a = self._layer0(self.audio_seq, self.audio_norm, self.audio_stats, lld, lld_mask, noise)
        v = self._layer0(self.video_seq, self.video_norm, self.video_stats, video, found, noise)
        za, ha = self.audio(a, noise)
        zv, hv = self.video(v, noise)
        zc, hc = self.cross(torch.cat([ha, hv], 1), noise)
        return {"za": za, "zv": zv, "zc": zc[1:], "av": self.head_av(hc), "a": self.head_a(ha), "v": self.head_v(hv)}

    def forward(self, lld, lld_mask, video, found, labels: torch.Tensor | None = None):
        if labels is None:
            return self._encode(lld, lld_mask, video, found, 0.0)["av"]
        if len(labels) < 2:  # batch statistics need two clips: a one-clip batch (a split's last) trains nothing
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            return {"loss": zero, "terms": {"supervised": zero.detach(), "reconstruction": zero.detach()}}
        out = self.ladder(lld, lld_mask, video, found)
        supervised = supervised_loss(out["logits"], labels)
        unsupervised = out["unsupervised"]
        loss = supervised + (unsupervised if self.config.reconstruction else unsupervised * 0.0)  # ablation: decoders get no gradient
        return {"loss": loss, "terms": {"supervised": supervised.detach(), "reconstruction": unsupervised.detach()}}

    def ladder(self, lld, lld_mask, video, found, *, zero_skip: str | None = None) -> dict:
        """Clean and noisy passes, the three noisy heads' logits, the reconstructions and their costs.

        `zero_skip` ("av:K", "a->v:K" or "v->a:K", K counted from the top) zeroes one lateral skip, to show it
        reaches the output."""
        clean = self._encode(lld, lld_mask, video, found, 0.0)
        noisy = self._encode(lld, lld_mask, video, found, self.config.noise)
        path, _, k = (zero_skip or "::").partition(":")
        zero = lambda name: int(k) if path == name else None  # noqa: E731
        rec_c = self.decode_av(noisy["av"], noisy["zc"][::-1], zero("av"))
        bottom = rec_c[-1]
        skips_for_v, skips_for_a = (noisy["za"], noisy["zv"]) if self.config.cross_skips else (noisy["zv"], noisy["za"])
        rec_v = self.decode_v(bottom, skips_for_v[::-1], zero("a->v"))
        rec_a = self.decode_a(bottom, skips_for_a[::-1], zero("v->a"))
        la = len(clean["za"])  # the cross layers sit above the modality layers

        def cost(rec: list[torch.Tensor], target: list[torch.Tensor], depth0: int) -> torch.Tensor:
            n = len(target)  # rec is top-first; depth of rec[j] = depth0 + n - 1 - j
            return sum(self.config.lam(depth0 + n - 1 - j) * F.mse_loss(r.float(), t.detach().float()) for j, (r, t) in enumerate(zip(rec, target[::-1])))

        costs = {"av": cost(rec_c, clean["zc"], la), "a->v": cost(rec_v, clean["zv"], 0), "v->a": cost(rec_a, clean["za"], 0)}
        return {"logits": {h: noisy[h] for h in ("av", "a", "v")}, "clean_logits": clean["av"], "noisy": noisy,
                "reconstructions": {"av": rec_c, "a->v": rec_v, "v->a": rec_a}, "costs": costs,
                "unsupervised": costs["av"] + 0.5 * (costs["a->v"] + costs["v->a"])}


def supervised_loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean of the AV, audio and video heads' cross-entropies over the labelled clips (label >= 0); 0 when none is."""
    known = labels >= 0
    total = sum(F.cross_entropy(logits[h].float(), labels, ignore_index=-1, reduction="sum") for h in ("av", "a", "v"))
    return total / (3 * known.sum().clamp_min(1))


@register_encoder("ladder", input_kind="sequences", options=LadderConfig,
                  description="seed 002 audiovisual ladder network over ComParE LLD frames + face-embedding sequences (cli.py extract --lld; cli.py embed)")
def ladder(*, num_classes: int = 6, in_channels: int = 4096, image_size: tuple[int, int] = (224, 224), frames: int = 16,
           pretrained: bool = False, config: LadderConfig = LadderConfig()) -> LadderNetwork:
    """Goncalves & Busso's ladder network; `in_channels` is the face embedding's width (4096 for VGG-Face fc7)."""
    if pretrained:
        raise ValueError("the ladder network is trained from scratch; its inputs come from pretrained extractors (cli.py embed --weights)")
    return LadderNetwork(audio_dim=LLD_DIM, video_dim=in_channels, num_classes=num_classes, config=config)
