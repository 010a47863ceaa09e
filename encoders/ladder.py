"""The audiovisual ladder network of Goncalves & Busso (seed 002), over ComParE LLD and face-embedding sequences.

Structure (the poster's; sizes and λ values it does not give are ours, stated):
* An encoder per modality and a cross-modal encoder on their joined top layers. Each layer is a ladder layer
  (Rasmus et al., 2015): z = BN(W h) without affine, h = ReLU(γ ⊙ (z + β)). The input of each modality is
  its sequence pooled over the valid steps (mean and SD per dimension), z-scored with the training split's
  statistics: layer 0.
* Two passes: a clean one, and a noisy one with Gaussian noise of SD `noise` added to every z (inputs
  included). Classification heads on the noisy pass give the supervised loss, the mean of the AV, audio and
  video heads' cross-entropies; the clean AV head predicts.
* Decoders reconstruct each layer's clean z from the noisy pass, top-down, each layer's estimate combining
  the signal from above with a lateral skip: the AV decoder reconstructs the cross-modal layers with skips
  from the noisy cross-modal encoder; below it, the video decoder (A→V) reconstructs the video encoder's
  layers with skips from the *audio* encoder, and the audio decoder (V→A) the audio layers with skips from
  the video encoder. `cross_skips=False` (an ablation) gives each modality's decoder its own encoder's skips.
* Unsupervised loss: λ_l-weighted layer reconstruction errors (mean squared, per layer), the AV decoder's
  plus half of the A→V and V→A decoders'.

Every head returns logits; none applies a softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from encoders.registry import register_encoder


@dataclass(frozen=True)
class LadderConfig:
    """Noise 0.3 is Rasmus et al.'s; one λ for every layer (the poster gives none) unless `lambdas` lists one per depth."""

    modality_layers: tuple[int, ...] = (256, 128)
    cross_layers: tuple[int, ...] = (128,)
    noise: float = 0.3
    lambdas: tuple[float, ...] = (1.0,)  # λ_l by depth from the input up; the last repeats
    cross_skips: bool = True  # False: ablation, each modality decoder reads its own encoder
    reconstruction: bool = True  # False: ablation, supervised loss only

    def lam(self, depth: int) -> float:
        return self.lambdas[min(depth, len(self.lambdas) - 1)]


def pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) and (B, T) -> (B, 2D): mean and SD over the valid steps (all steps when none is valid)."""
    m = mask.float()
    m = torch.where(m.sum(1, keepdim=True) > 0, m, torch.ones_like(m))[..., None]
    count = m.sum(1)
    mean = (x * m).sum(1) / count
    var = ((x - mean[:, None]) ** 2 * m).sum(1) / count
    return torch.cat([mean, var.clamp_min(0).sqrt()], dim=1)


class LadderEncoder(nn.Module):
    """Ladder layers sizes[0] -> sizes[1] -> ...; returns every z (z[0] is the input) and the top h."""

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
            if noise:  # batch statistics, without touching the running ones: those are the clean pass's, for inference
                z = F.batch_norm(linear(h), None, None, training=True)
                z = z + noise * torch.randn_like(z)
            else:
                z = norm(linear(h))
            zs.append(z)
            h = F.relu(gamma * (z + beta))
        return zs, h


class Combinator(nn.Module):
    """ẑ = W s + a ⊙ u + b ⊙ (W s) ⊙ u + c: the lateral skip s (any width) meets the top-down signal u."""

    def __init__(self, skip: int, width: int):
        super().__init__()
        self.skip = nn.Linear(skip, width)
        self.a = nn.Parameter(torch.ones(width))
        self.b = nn.Parameter(torch.zeros(width))

    def forward(self, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        lateral = self.skip(s)
        return lateral + self.a * u + self.b * lateral * u


class LadderDecoder(nn.Module):
    """Top-down over `targets` (widths, top first), one combinator per layer with skips of `skips` widths."""

    def __init__(self, top_in: int, targets: list[int], skips: list[int]):
        super().__init__()
        self.up = nn.ModuleList(nn.Linear(a, b) for a, b in zip([top_in, *targets[:-1]], targets))
        self.combine = nn.ModuleList(Combinator(s, t) for s, t in zip(skips, targets))

    def forward(self, top: torch.Tensor, skips: list[torch.Tensor], zero: int | None = None) -> list[torch.Tensor]:
        out, signal = [], top
        for k, (up, combine, s) in enumerate(zip(self.up, self.combine, skips)):
            u = up(signal)
            signal = combine(torch.zeros_like(s) if k == zero else s, u)
            out.append(signal)
        return out


class LadderNetwork(nn.Module):
    """`forward(audio, audio_mask, video, video_mask)` -> the clean AV head's logits; `ladder(...)` -> everything
    training needs. Input statistics (z-scoring) are buffers the trainer sets from the training split."""

    def __init__(self, *, audio_dim: int, video_dim: int, num_classes: int, config: LadderConfig = LadderConfig()):
        super().__init__()
        self.config = config
        a_sizes = [2 * audio_dim, *config.modality_layers]
        v_sizes = [2 * video_dim, *config.modality_layers]
        c_sizes = [a_sizes[-1] + v_sizes[-1], *config.cross_layers]
        self.register_buffer("audio_stats", torch.stack([torch.zeros(2 * audio_dim), torch.ones(2 * audio_dim)]))
        self.register_buffer("video_stats", torch.stack([torch.zeros(2 * video_dim), torch.ones(2 * video_dim)]))
        self.audio, self.video, self.cross = LadderEncoder(a_sizes), LadderEncoder(v_sizes), LadderEncoder(c_sizes)
        self.head_av, self.head_a, self.head_v = (nn.Linear(c_sizes[-1], num_classes), nn.Linear(a_sizes[-1], num_classes),
                                                  nn.Linear(v_sizes[-1], num_classes))
        self.decode_av = LadderDecoder(num_classes, c_sizes[:0:-1], c_sizes[:0:-1])
        # below the AV decoder: A→V rebuilds the video layers from the audio encoder's skips, V→A the reverse
        skip_v, skip_a = (a_sizes, v_sizes) if config.cross_skips else (v_sizes, a_sizes)
        self.decode_v = LadderDecoder(c_sizes[1], v_sizes[::-1], skip_v[::-1])
        self.decode_a = LadderDecoder(c_sizes[1], a_sizes[::-1], skip_a[::-1])

    def set_input_stats(self, audio: torch.Tensor, video: torch.Tensor) -> None:
        """Mean and SD of the pooled training inputs: every input is z-scored with them."""
        for buffer, x in ((self.audio_stats, audio), (self.video_stats, video)):
            buffer.copy_(torch.stack([x.mean(0), x.std(0).clamp_min(1e-6)]))

    def inputs(self, audio, audio_mask, video, video_mask) -> tuple[torch.Tensor, torch.Tensor]:
        a = (pool(audio, audio_mask) - self.audio_stats[0]) / self.audio_stats[1]
        v = (pool(video, video_mask) - self.video_stats[0]) / self.video_stats[1]
        return a, v

    def _encode(self, a: torch.Tensor, v: torch.Tensor, noise: float) -> dict:
        za, ha = self.audio(a, noise)
        zv, hv = self.video(v, noise)
        zc, hc = self.cross(torch.cat([ha, hv], 1), noise)
        return {"za": za, "zv": zv, "zc": zc[1:], "av": self.head_av(hc), "a": self.head_a(ha), "v": self.head_v(hv)}

    def forward(self, audio, audio_mask, video, video_mask) -> torch.Tensor:
        a, v = self.inputs(audio, audio_mask, video, video_mask)
        return self._encode(a, v, 0.0)["av"]

    def ladder(self, audio, audio_mask, video, video_mask, *, zero_skip: str | None = None) -> dict:
        """Clean and noisy passes, the three noisy heads' logits, the reconstructions and their costs.

        `zero_skip` ("av:K", "a->v:K" or "v->a:K", K counted from the top) zeroes one lateral skip, to show it
        reaches the output."""
        a, v = self.inputs(audio, audio_mask, video, video_mask)
        clean = self._encode(a, v, 0.0)
        noisy = self._encode(a, v, self.config.noise)
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
            return sum(self.config.lam(depth0 + n - 1 - j) * F.mse_loss(r, t.detach()) for j, (r, t) in enumerate(zip(rec, target[::-1])))

        costs = {"av": cost(rec_c, clean["zc"], la), "a->v": cost(rec_v, clean["zv"], 0), "v->a": cost(rec_a, clean["za"], 0)}
        return {"logits": {h: noisy[h] for h in ("av", "a", "v")}, "clean_logits": clean["av"],
                "reconstructions": {"av": rec_c, "a->v": rec_v, "v->a": rec_a}, "costs": costs,
                "unsupervised": costs["av"] + 0.5 * (costs["a->v"] + costs["v->a"])}


def supervised_loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean of the AV, audio and video heads' cross-entropies over the labelled clips (label >= 0); 0 when none is."""
    known = labels >= 0
    if not known.any():
        return logits["av"].sum() * 0.0
    return sum(F.cross_entropy(logits[h][known].float(), labels[known]) for h in ("av", "a", "v")) / 3


@register_encoder("ladder", input_kind="sequences",
                  description="seed 002 audiovisual ladder network over ComParE LLD + face-embedding sequences (cli.py extract --lld; cli.py embed)")
def ladder(*, num_classes: int = 6, in_channels: int = 3, image_size: tuple[int, int] = (224, 224), frames: int = 16,
           pretrained: bool = False, audio_dim: int = 130, video_dim: int = 4096, config: LadderConfig = LadderConfig()) -> LadderNetwork:
    """Goncalves & Busso's ladder network; trained by encoders/ladder_train.py (semi-supervised losses)."""
    if pretrained:
        raise ValueError("the ladder network is trained from scratch; its inputs come from pretrained extractors (cli.py embed --weights)")
    return LadderNetwork(audio_dim=audio_dim, video_dim=video_dim, num_classes=num_classes, config=config)
