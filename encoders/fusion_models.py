"""Audio-visual ("pair") encoders, called as ``model(vision, audio)`` and returning raw logits.

* ``xattn``: cross-modal attention over per-frame face and spectrogram-chunk embeddings (the study's
  seed 003). Vision ``(B, T, 3, H, W)`` = T face crops; audio ``(B, T, 1, H', W')`` = the T mel
  chunks aligned with those frames.
* ``late``: late fusion, the mean of the logits of a vision image model on the middle face
  ``(B, 3, H, W)`` and an audio image model on the whole-clip spectrogram image ``(B, 1, H, W)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn

from encoders.image2d import resnet18
from encoders.registry import get_model, get_spec, register_encoder

__all__ = ["CrossModalAttentionFusion", "LateFusion", "SpectrogramCNN", "build_late_fusion", "late", "xattn"]


class SpectrogramCNN(nn.Module):
    """Four (Conv3x3 + BatchNorm + ReLU + MaxPool2) blocks, 1 -> 32 -> 64 -> 128 -> 256 channels, global average pool.

    Pools round up, so chunks as narrow as a few STFT frames still work. Output: ``(N, 256)``.
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [
                nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            in_channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class CrossModalAttentionFusion(nn.Module):
    """Per-frame face and audio embeddings fused by self- and cross-modal attention (study seed 003).

    1. Each of the T face crops goes through a ResNet-18 trunk (He et al. 2016; 512 features) and
       each of the T spectrogram chunks through a :class:`SpectrogramCNN` (256 features); both are
       projected to a common width ``dim``.
    2. Learned time embeddings (one per frame position) and modality embeddings are added.
    3. One self-attention layer over the joined sequence of 2T tokens, then two cross-attention
       layers computed side by side: video tokens query the audio tokens and audio tokens query the
       video tokens (Vaswani et al. 2017 multi-head attention). Every attention layer has a residual
       (skip) connection followed by LayerNorm.
    4. Mean pooling over all 2T tokens, dropout, linear head.

    Deviation: the original model fed the raw 16 kHz waveform to a pretrained speech encoder; here
    the audio branch reads the feature store's mel-spectrogram chunks with a small CNN trained from
    scratch. The trainer reads :attr:`label_smoothing` and gives :meth:`pretrained_parameters` a
    learning rate 100 times smaller, as the original recipe did.
    """

    label_smoothing: ClassVar[float] = 0.2

    def __init__(
        self,
        *,
        num_classes: int = 6,
        frames: int = 16,
        vision_channels: int = 3,
        audio_channels: int = 1,
        dim: int = 256,
        heads: int = 4,
        dropout: float = 0.1,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.frames = frames
        self._backbone_is_pretrained = pretrained
        self.vision_backbone = resnet18(in_channels=vision_channels, pretrained=pretrained)
        vision_features = self.vision_backbone.fc.in_features
        self.vision_backbone.fc = nn.Identity()
        self.audio_backbone = SpectrogramCNN(audio_channels)
        self.vision_proj = nn.Linear(vision_features, dim)
        self.audio_proj = nn.Linear(self.audio_backbone.out_features, dim)

        self.time_embed = nn.Parameter(torch.zeros(1, frames, dim))
        self.modality_embed = nn.Parameter(torch.zeros(2, dim))
        nn.init.trunc_normal_(self.time_embed, std=0.02)
        nn.init.trunc_normal_(self.modality_embed, std=0.02)

        def attention() -> nn.MultiheadAttention:
            return nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

        self.joint_attn, self.joint_norm = attention(), nn.LayerNorm(dim)
        self.video_to_audio_attn, self.video_norm = attention(), nn.LayerNorm(dim)
        self.audio_to_video_attn, self.audio_norm = attention(), nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def pretrained_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters initialised from ImageNet (the face ResNet-18 trunk); none without ``pretrained=True``."""
        if self._backbone_is_pretrained:
            yield from self.vision_backbone.parameters()

    def _embed(self, x: torch.Tensor, backbone: nn.Module, proj: nn.Module) -> torch.Tensor:
        batch, steps = x.shape[:2]
        return proj(backbone(x.flatten(0, 1))).unflatten(0, (batch, steps))  # (B, T, dim)

    def forward(self, vision: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        if vision.dim() != 5 or audio.dim() != 5 or vision.shape[:2] != audio.shape[:2]:
            raise ValueError(
                f"expected vision (B, T, C, H, W) and audio (B, T, 1, H, W) with the same B, T; "
                f"got {tuple(vision.shape)} and {tuple(audio.shape)}"
            )
        steps = vision.shape[1]
        if steps > self.frames:
            raise ValueError(f"built for at most {self.frames} frames, got {steps}")
        v = self._embed(vision, self.vision_backbone, self.vision_proj)
        a = self._embed(audio, self.audio_backbone, self.audio_proj)
        v = v + self.time_embed[:, :steps] + self.modality_embed[0]
        a = a + self.time_embed[:, :steps] + self.modality_embed[1]

        joint = torch.cat([v, a], dim=1)
        joint = self.joint_norm(joint + self.joint_attn(joint, joint, joint, need_weights=False)[0])
        v, a = joint[:, :steps], joint[:, steps:]

        v_out = self.video_norm(v + self.video_to_audio_attn(v, a, a, need_weights=False)[0])
        a_out = self.audio_norm(a + self.audio_to_video_attn(a, v, v, need_weights=False)[0])
        return self.head(torch.cat([v_out, a_out], dim=1).mean(dim=1))


@register_encoder(
    "xattn",
    input_kind="pair-video",
    description="Cross-modal attention, ResNet-18 faces (B,T,3,H,W) + CNN mel chunks (B,T,1,H,W), ~12.6 M",
    lr=1e-4,  # and weight decay: seed 003's
    weight_decay=1e-3,
    cpu_micro_batch=1,  # a CPU training process within 3 GB at 224 px: bench/results/micro-batches.md
)
def xattn(
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    frames: int = 16,
    pretrained: bool = False,
) -> CrossModalAttentionFusion:
    """:class:`CrossModalAttentionFusion` with width 256 and 4 heads for up to ``frames`` frames per clip.

    ``in_channels`` is the face channels; ``pretrained`` loads ImageNet weights into the face ResNet-18
    only. ``image_size`` is unused (both branches pool globally).
    """
    return CrossModalAttentionFusion(
        num_classes=num_classes, frames=frames, vision_channels=in_channels, pretrained=pretrained
    )


class LateFusion(nn.Module):
    """Late fusion: the logits of a vision model and of an audio model, averaged."""

    def __init__(self, vision_model: nn.Module, audio_model: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.audio_model = audio_model

    def forward(self, vision: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return (self.vision_model(vision) + self.audio_model(audio)) / 2


def build_late_fusion(
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    pretrained: bool = False,
    vision_model: str = "resnet18",
    audio_model: str = "resnet18",
) -> LateFusion:
    """Late fusion of two registered image models: ``vision_model`` reads ``in_channels`` channels (the
    middle face), ``audio_model`` one channel (the whole-clip spectrogram image); both are built for
    ``image_size`` (which only matters for the transformers)."""
    for name in (vision_model, audio_model):
        if get_spec(name).input_kind != "image":
            raise ValueError(f"late fusion combines image models; {name!r} is a {get_spec(name).input_kind} model")
    common = dict(num_classes=num_classes, image_size=image_size, pretrained=pretrained)
    return LateFusion(
        get_model(vision_model, in_channels=in_channels, **common), get_model(audio_model, in_channels=1, **common)
    )


@register_encoder(
    "late",
    input_kind="pair-image",
    description="Late fusion, mean of ResNet-18 logits: middle face (B,3,H,W), spectrogram (B,1,H,W), ~22.4 M",
)
def late(
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    frames: int = 16,
    pretrained: bool = False,
) -> LateFusion:
    """Two ResNet-18s (He et al. 2016), one per modality, logits averaged; see :func:`build_late_fusion`.
    ``frames`` is unused."""
    return build_late_fusion(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, pretrained=pretrained
    )
