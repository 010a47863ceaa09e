"""Video encoders: a tiny 3D CNN, I3D (inflated Inception-v1) and VideoMAE (ViT-B).

All take clips ``(B, C, T, H, W)`` and return raw logits ``(B, num_classes)``.

* ``simple3d``: the study's 3,262-parameter baseline.
* ``i3d``: Carreira & Zisserman, "Quo Vadis, Action Recognition? A New Model and the Kinetics
  Dataset", CVPR 2017 -- written here from the paper's description.
* ``videomae``: Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for
  Self-Supervised Video Pre-Training", NeurIPS 2022 -- the Hugging Face ``transformers`` model.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from encoders.image2d import adapt_input_conv, load_torchvision_weights, torchvision_weights
from encoders.registry import register_encoder

__all__ = ["I3D", "Simple3DCNN", "VideoMAEClassifier", "build_videomae", "i3d", "simple3d", "videomae"]

VIDEOMAE_CHECKPOINT = "MCG-NJU/videomae-base"


# --------------------------------------------------------------------------------------------------
# simple3d
# --------------------------------------------------------------------------------------------------


class Simple3DCNN(nn.Module):
    """Conv3d(C->8) then one shared Conv3d(8->8) applied repeatedly, each followed by ReLU and MaxPool3d(2).

    The shared convolution is applied at least once and then again while another application leaves
    every dimension of the feature map at 2 or more; for the usual clips (T no larger than H and W)
    that means "until T would drop below 2": 16x224x224 -> stem 8x112x112 -> shared 4x56x56 ->
    shared 2x28x28. An ``AdaptiveAvgPool3d((2, 3, 3))`` then fixes the flattened size at 8*2*3*3 = 144
    whatever the input size, and ``Linear(144, num_classes)`` gives the logits.
    Parameters with 3 channels and 6 classes: 656 + 1,736 + 870 = 3,262. Inputs need T, H, W >= 4.
    """

    def __init__(self, *, num_classes: int = 6, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv3d(in_channels, width, kernel_size=3, padding=1)
        self.shared = nn.Conv3d(width, width, kernel_size=3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool3d(2)
        self.squeeze = nn.AdaptiveAvgPool3d((2, 3, 3))
        self.fc = nn.Linear(width * 2 * 3 * 3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[2:]) < 4:
            raise ValueError(f"simple3d needs T, H, W >= 4, got {tuple(x.shape[2:])}")
        x = self.pool(self.act(self.stem(x)))
        x = self.pool(self.act(self.shared(x)))
        while min(x.shape[2:]) >= 4:
            x = self.pool(self.act(self.shared(x)))
        return self.fc(self.squeeze(x).flatten(1))


@register_encoder(
    "simple3d",
    input_kind="video",
    description="Tiny 3D CNN with one shared conv (study baseline), 3,262 parameters",
    cpu_micro_batch=8,  # a CPU training process within 3 GB at 224 px: bench/results/micro-batches.md
)
def simple3d(
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    frames: int = 16,
    pretrained: bool = False,
) -> Simple3DCNN:
    """The study's baseline 3D CNN (exactly 3,262 parameters at 3 channels / 6 classes); any clip size with
    T, H, W >= 4, so ``image_size`` and ``frames`` are unused. No pretrained weights exist."""
    if pretrained:
        raise ValueError("simple3d is trained from scratch; there are no pretrained weights")
    return Simple3DCNN(num_classes=num_classes, in_channels=in_channels)


# --------------------------------------------------------------------------------------------------
# I3D
# --------------------------------------------------------------------------------------------------


class Unit3d(nn.Sequential):
    """Conv3d (no bias) + BatchNorm3d + ReLU, the building block of I3D."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        *,
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
                bn=nn.BatchNorm3d(out_channels, eps=1e-3),
                relu=nn.ReLU(inplace=True),
            )
        )


class Inception3d(nn.Module):
    """Inflated Inception module: 1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3 | 3x3x3 max-pool -> 1x1x1.

    Like the Inception-v1 that I3D inflates (and torchvision's GoogLeNet), the third ("5x5") branch
    uses a 3x3x3 kernel.
    """

    def __init__(
        self, in_channels: int, ch1: int, ch3_reduce: int, ch3: int, ch5_reduce: int, ch5: int, pool_proj: int
    ) -> None:
        super().__init__()
        self.branch1 = Unit3d(in_channels, ch1, 1)
        self.branch2 = nn.Sequential(Unit3d(in_channels, ch3_reduce, 1), Unit3d(ch3_reduce, ch3, 3, padding=1))
        self.branch3 = nn.Sequential(Unit3d(in_channels, ch5_reduce, 1), Unit3d(ch5_reduce, ch5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), Unit3d(in_channels, pool_proj, 1))
        self.out_channels = ch1 + ch3 + ch5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


# GoogLeNet's Inception modules: (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj); a max-pool
# (given below) precedes 4a and 5a.
_INCEPTION_V1 = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


class I3D(nn.Module):
    """RGB-stream I3D: Inception-v1 with every 2D kernel inflated to 3D (Carreira & Zisserman 2017, Fig. 3).

    Stem: 7x7x7 conv stride 2 -> 1x3x3 max-pool stride (1,2,2) -> 1x1x1 conv -> 3x3x3 conv -> 1x3x3
    max-pool stride (1,2,2); Inception 3a, 3b -> 3x3x3 max-pool stride 2 -> 4a..4e -> 2x2x2 max-pool
    stride 2 -> 5a, 5b; global average pool, dropout, linear classifier.
    A 16x224x224 clip is reduced to 2x7x7 before the pool. Submodule names follow torchvision's
    GoogLeNet so that its 2D checkpoint maps one-to-one onto this network.

    Deviations from the paper: the paper's head is a 2x7x7 average pool, a 1x1x1 conv and a mean
    of the logits over time; here a global average pool and a linear layer (equivalent up to the
    pooling window). The last max-pool rounds up ("ceil" mode) so that short clips (8 frames, which
    reach it with a single frame) still work.
    """

    def __init__(self, *, num_classes: int = 6, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = Unit3d(in_channels, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.conv2 = Unit3d(64, 64, 1)
        self.conv3 = Unit3d(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.inception3a = Inception3d(*_INCEPTION_V1["inception3a"])
        self.inception3b = Inception3d(*_INCEPTION_V1["inception3b"])
        self.maxpool3 = nn.MaxPool3d(3, stride=2, padding=1)
        self.inception4a = Inception3d(*_INCEPTION_V1["inception4a"])
        self.inception4b = Inception3d(*_INCEPTION_V1["inception4b"])
        self.inception4c = Inception3d(*_INCEPTION_V1["inception4c"])
        self.inception4d = Inception3d(*_INCEPTION_V1["inception4d"])
        self.inception4e = Inception3d(*_INCEPTION_V1["inception4e"])
        self.maxpool4 = nn.MaxPool3d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception3d(*_INCEPTION_V1["inception5a"])
        self.inception5b = Inception3d(*_INCEPTION_V1["inception5b"])
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.inception5b.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        for block in (self.inception4a, self.inception4b, self.inception4c, self.inception4d, self.inception4e):
            x = block(x)
        x = self.inception5b(self.inception5a(self.maxpool4(x)))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


def _inflate_googlenet_weights(model: I3D) -> None:
    """Load torchvision's ImageNet GoogLeNet into ``model`` (3 input channels), inflating each 2D kernel.

    A ``k x k`` kernel becomes ``t x k x k`` by repeating it ``t`` times along time and dividing by
    ``t``, so a clip of identical frames gives the 2D network's activations (Carreira & Zisserman,
    Sec. 2.3, "boring video" bootstrapping). Batch-norm statistics are copied; the classifier is not.
    """
    state2d = load_torchvision_weights(torchvision_weights("GoogLeNet_Weights"))
    inflated: dict[str, torch.Tensor] = {}
    for key, target in model.state_dict().items():
        if key.startswith("fc."):
            continue
        source = state2d[key]
        if source.dim() == 4 and target.dim() == 5:
            t = target.shape[2]
            source = source.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
        inflated[key] = source
    missing, _ = model.load_state_dict(inflated, strict=False)
    assert all(key.startswith("fc.") for key in missing), missing


@register_encoder(
    "i3d",
    input_kind="video",
    description="I3D, Inception-v1 inflated to 3D (Carreira & Zisserman 2017), ~12.3 M",
    cpu_micro_batch=2,  # a CPU training process within 3 GB at 224 px: bench/results/micro-batches.md
)
def i3d(
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    frames: int = 16,
    pretrained: bool = False,
) -> I3D:
    """I3D (Carreira & Zisserman, CVPR 2017), see :class:`I3D`; ``image_size`` and ``frames`` are unused
    (global pooling; clips of at least 8x32x32 work).

    With ``pretrained=True`` the ImageNet GoogLeNet weights of torchvision
    (``GoogLeNet_Weights.DEFAULT``) are inflated to 3D; they expect inputs scaled to [-1, 1]. This
    needs network access or a pre-populated torch hub cache (``~/.cache/torch/hub/checkpoints``);
    otherwise a ``RuntimeError`` says so. The stem is then adapted to ``in_channels`` like the 2D CNNs.
    """
    model = I3D(num_classes=num_classes, in_channels=3)
    if pretrained:
        _inflate_googlenet_weights(model)
    model.conv1.conv = adapt_input_conv(model.conv1.conv, in_channels, pretrained=pretrained)
    return model


# --------------------------------------------------------------------------------------------------
# VideoMAE
# --------------------------------------------------------------------------------------------------


class VideoMAEClassifier(nn.Module):
    """Wraps ``transformers.VideoMAEForVideoClassification`` to take ``(B, C, T, H, W)`` and return logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x.transpose(1, 2)).logits  # HF wants (B, T, C, H, W)

    def checkpoint_activations(self) -> None:
        """Keep only each layer's input and recompute the rest in the backward: one 16-frame sample's 1,568
        tokens hold ~0.95 GB of activations otherwise, which put a CPU process at 3.5 GB (train.lighten_cpu_passes)."""
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def build_videomae(
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    frames: int = 16,
    pretrained: bool = False,
    **overrides: Any,
) -> VideoMAEClassifier:
    """VideoMAE video classifier; ``overrides`` go to ``VideoMAEConfig`` (e.g. ``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, ``patch_size`` for a tiny test model).

    ``image_size`` must be square; ``frames`` must be divisible by the tubelet size (2). With
    ``pretrained=True`` the self-supervised Kinetics-400 checkpoint ``MCG-NJU/videomae-base`` is loaded
    through ``from_pretrained`` (the classifier head is new); its position embeddings are fixed
    sinusoids, so other frame counts and sizes work. For ``in_channels`` other than 3 the patch
    projection is adapted like the CNN stems.

    Raises:
        RuntimeError: ``pretrained=True`` but the checkpoint is neither cached nor downloadable.
    """
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification  # heavy import, only when needed

    height, width = image_size
    if height != width:
        raise ValueError(f"videomae needs a square image_size, got {image_size}")
    options = dict(num_frames=frames, image_size=height, num_labels=num_classes, **overrides)
    if pretrained:
        try:
            model = VideoMAEForVideoClassification.from_pretrained(VIDEOMAE_CHECKPOINT, **options)
        except OSError as exc:
            raise RuntimeError(
                f"pretrained weights {VIDEOMAE_CHECKPOINT!r} need network access to the Hugging Face hub "
                f"or a pre-populated Hugging Face cache: {exc}"
            ) from exc
        patches = model.videomae.embeddings.patch_embeddings
        patches.projection = adapt_input_conv(patches.projection, in_channels, pretrained=True)
        patches.num_channels = model.config.num_channels = in_channels
    else:
        model = VideoMAEForVideoClassification(VideoMAEConfig(num_channels=in_channels, **options))
    return VideoMAEClassifier(model)


@register_encoder(
    "videomae",
    input_kind="video",
    description="VideoMAE ViT-B/16, tubelet 2 (Tong et al. 2022), HF, ~86 M",
    square_input=True,
    lr=1e-4,
    cpu_micro_batch=1,  # a CPU training process within 3 GB at 224 px: bench/results/micro-batches.md
)
def videomae(
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    frames: int = 16,
    pretrained: bool = False,
) -> VideoMAEClassifier:
    """VideoMAE, ViT-B defaults (hidden 768, 12 layers, 12 heads, patch 16, tubelet 2); see :func:`build_videomae`."""
    return build_videomae(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, frames=frames, pretrained=pretrained
    )
