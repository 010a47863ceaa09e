"""2D image encoders from torchvision: ResNet-18, GoogLeNet, VGG-16 and ViT-B/16.

* ResNet-18: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
* GoogLeNet: Szegedy et al., "Going Deeper with Convolutions", CVPR 2015 (built without the two
  auxiliary classifiers and without torchvision's ``transform_input`` re-normalisation).
* VGG-16: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
  ICLR 2015 (configuration D, no batch norm).
* ViT-B/16: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.

All four take ``(B, C, H, W)`` with ``C`` in {1, 3, 6}: the first convolution (the "stem") is
re-made for ``C`` channels by :func:`adapt_input_conv`, which keeps the ImageNet filters when
``pretrained=True``. The three CNNs end in adaptive pooling, so any ``(H, W)`` of at least 32x32 works,
including the 224x448 side-by-side fusion images; ViT-B/16 needs the square ``image_size`` it was
built for. All return raw logits.

torchvision is imported only when a model is built from it (and for ImageNet weights): its ops import torch._dynamo
and triton, 0.16 GB of every process that imports it. VGG-16 is built here, with torchvision's modules, parameter
names and initialisation, so that a vgg16 run, the one whose CPU peak is at 3 GB (bench/results/micro-batches.md),
never imports torchvision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from encoders.registry import register_encoder

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

__all__ = ["VGG16", "adapt_input_conv", "googlenet", "load_torchvision_weights", "resnet18", "vgg16", "vit_b16"]

StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Shared helpers (also used by encoders.video3d and encoders.fusion_models)
# --------------------------------------------------------------------------------------------------


def adapt_input_conv(conv: nn.Conv2d | nn.Conv3d, in_channels: int, *, pretrained: bool) -> nn.Conv2d | nn.Conv3d:
    """Re-make an RGB stem convolution (2D or 3D) so that it reads ``in_channels`` (1, 3 or 6) channels.

    With ``pretrained=True`` the new filters come from the RGB ones: for 1 channel they are the sum of
    the three RGB filters (a grey image replicated to RGB gives the same response); for 6 channels
    (two RGB images stacked along the channel axis) the RGB filters are repeated and halved (two copies
    of the same image give the same response). Without pretrained weights the new filters are drawn
    from ``N(0, s^2 * 3 / in_channels)``, ``s`` being the standard deviation of the model's own
    initialisation, so the stem's output variance matches the 3-channel model. The bias is kept.
    The returned module is ``conv`` itself when ``in_channels == 3``.
    """
    if in_channels not in (1, 3, 6):
        raise ValueError(f"in_channels must be 1, 3 or 6, not {in_channels}")
    if conv.in_channels != 3 or conv.groups != 1:
        raise ValueError(f"expected an ungrouped convolution over 3 channels, got {conv}")
    if in_channels == 3:
        return conv
    new = type(conv)(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        rgb = conv.weight
        if not pretrained:
            new.weight.copy_(torch.randn_like(new.weight) * rgb.std() * math.sqrt(3 / in_channels))
        elif in_channels == 1:
            new.weight.copy_(rgb.sum(dim=1, keepdim=True))
        else:
            new.weight.copy_(rgb.repeat(1, 2, *([1] * (rgb.dim() - 2))) / 2)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def load_torchvision_weights(weights: WeightsEnum) -> StateDict:
    """Fetch a torchvision checkpoint's state dict (from the torch hub cache, else the network).

    Raises:
        RuntimeError: the checkpoint is not cached and cannot be downloaded.
    """
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except OSError as exc:  # URLError, socket timeouts and missing files are all OSErrors
        raise RuntimeError(
            f"pretrained weights {weights} need network access or a pre-populated torch hub cache "
            f"(~/.cache/torch/hub/checkpoints): {exc}"
        ) from exc


def _load_matching(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state)`` that tolerates extra keys in ``state`` but no missing ones."""
    missing, _unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise RuntimeError(f"pretrained checkpoint lacks {len(missing)} parameters, e.g. {missing[:3]}")


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` (e.g. ``"classifier.6"``) by ``module``."""
    parent_path, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, leaf, module)


# --------------------------------------------------------------------------------------------------
# torchvision variants: data, built by one helper
# --------------------------------------------------------------------------------------------------


def _fit_vit_state(state: StateDict, model: nn.Module) -> StateDict:
    """Resize ViT position embeddings when the model's image size differs from the checkpoint's."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    return interpolate_embeddings(model.image_size, model.patch_size, dict(state))


VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
"""Configuration D of the VGG paper (Table 1): 3x3 convolutions of these widths, "M" a 2x2 max-pooling."""


class VGG16(nn.Module):
    """VGG-16 without batch norm, as torchvision builds it: the same modules in the same order (so the same
    parameter names, and its ImageNet checkpoint loads as is) and the same initialisation (so a seed gives the
    same weights; tests/test_encoders.py checks both against torchvision's)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, weights: None = None) -> None:
        super().__init__()
        if weights is not None:
            raise ValueError("VGG16 builds random weights; load a checkpoint with load_state_dict")
        layers: list[nn.Module] = []
        channels = 3
        for width in VGG16_LAYERS:
            if width == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))  # any input of at least 32x32, the 224x448 concat image too
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.constant_(module.bias, 0)

        self.recompute = False  # checkpoint_activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            start = 0
            for end in [k + 1 for k, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]:  # a block: convs, then its pool
                x = checkpoint(self.features[start:end], x, use_reentrant=False)
                start = end
        else:
            x = self.features(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def checkpoint_activations(self) -> None:
        """Keep only each block's input and recompute the block in the backward (train.lighten_cpu_passes)."""
        self.recompute = True


@dataclass(frozen=True)
class _TorchvisionVariant:
    constructor: str  # torchvision.models.<constructor>, imported when a model is built
    weights: str  # torchvision.models.<weights>.DEFAULT: the ImageNet checkpoint
    stem: str  # dotted path of the first convolution
    head: str  # dotted path of the final nn.Linear
    options: Mapping[str, Any] = field(default_factory=dict)
    fit_state: Callable[[StateDict, nn.Module], StateDict] | None = None
    built_here: Callable[..., nn.Module] | None = None  # instead of torchvision's constructor: same modules, same names


_VARIANTS: dict[str, _TorchvisionVariant] = {
    "resnet18": _TorchvisionVariant("resnet18", "ResNet18_Weights", stem="conv1", head="fc"),
    "googlenet": _TorchvisionVariant(
        "googlenet",
        "GoogLeNet_Weights",
        stem="conv1.conv",
        head="fc",
        options={"aux_logits": False, "transform_input": False, "init_weights": True},
    ),
    "vgg16": _TorchvisionVariant("vgg16", "VGG16_Weights", stem="features.0", head="classifier.6", built_here=VGG16),
    "vit-b16": _TorchvisionVariant("vit_b_16", "ViT_B_16_Weights", stem="conv_proj", head="heads.head", fit_state=_fit_vit_state),
}


def torchvision_weights(name: str) -> "WeightsEnum":
    """torchvision.models.<name>.DEFAULT (imports torchvision)."""
    from torchvision import models

    return getattr(models, name).DEFAULT


def _build_torchvision(
    name: str, *, num_classes: int, in_channels: int, pretrained: bool, **arch: Any
) -> nn.Module:
    """Build torchvision model ``name``, optionally with ImageNet weights, for ``in_channels`` inputs."""
    variant = _VARIANTS[name]
    if variant.built_here is not None:
        constructor = variant.built_here
    else:
        from torchvision import models

        constructor = getattr(models, variant.constructor)
    if pretrained:
        model = constructor(weights=None, **variant.options, **arch)  # ImageNet-sized head
        state = load_torchvision_weights(torchvision_weights(variant.weights))
        if variant.fit_state is not None:
            state = variant.fit_state(state, model)
        _load_matching(model, state)  # GoogLeNet's checkpoint also holds the unused auxiliary heads
        old_head = model.get_submodule(variant.head)
        _set_submodule(model, variant.head, nn.Linear(old_head.in_features, num_classes))
    else:
        model = constructor(weights=None, num_classes=num_classes, **variant.options, **arch)
    stem = model.get_submodule(variant.stem)
    _set_submodule(model, variant.stem, adapt_input_conv(stem, in_channels, pretrained=pretrained))
    return model


# --------------------------------------------------------------------------------------------------
# Public builders
# --------------------------------------------------------------------------------------------------


@register_encoder(
    "resnet18",
    input_kind="image",
    description="ResNet-18 (He et al. 2016), torchvision, ~11.2 M",
)
def resnet18(
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    frames: int = 16,
    pretrained: bool = False,
) -> nn.Module:
    """ResNet-18 (He et al., CVPR 2016); any ``image_size`` >= 32x32; ``frames`` is unused."""
    return _build_torchvision("resnet18", num_classes=num_classes, in_channels=in_channels, pretrained=pretrained)


@register_encoder(
    "googlenet",
    input_kind="image",
    description="GoogLeNet / Inception-v1 (Szegedy et al. 2015), torchvision, ~5.6 M",
)
def googlenet(
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    frames: int = 16,
    pretrained: bool = False,
) -> nn.Module:
    """GoogLeNet (Szegedy et al., CVPR 2015) without auxiliary classifiers or ``transform_input``.

    Deviation from the paper, inherited from torchvision: the "5x5" branch of each Inception module
    uses a 3x3 convolution (as in the weights torchvision ports). Note that those ImageNet weights
    expect inputs scaled to [-1, 1] (torchvision's ``transform_input`` did that conversion; it is off
    here, so the data pipeline's normalisation applies as is). ``frames`` is unused.
    """
    return _build_torchvision("googlenet", num_classes=num_classes, in_channels=in_channels, pretrained=pretrained)


@register_encoder(
    "vgg16",
    input_kind="image",
    description="VGG-16 (Simonyan & Zisserman 2015), torchvision's layout, ~134 M",
    lr=1e-4,
    cpu_micro_batch=1,  # its lowest CPU peak, 3.0 GB: parameters, gradients and Adam state alone take 2.15 GB (bench/results/micro-batches.md)
)
def vgg16(
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    frames: int = 16,
    pretrained: bool = False,
) -> nn.Module:
    """VGG-16, configuration D without batch norm (Simonyan & Zisserman, ICLR 2015); ``frames`` is unused."""
    return _build_torchvision("vgg16", num_classes=num_classes, in_channels=in_channels, pretrained=pretrained)


@register_encoder(
    "vit-b16",
    input_kind="image",
    description="ViT-B/16 (Dosovitskiy et al. 2021), torchvision, ~86 M",
    square_input=True,
    lr=1e-4,
    cpu_micro_batch=2,  # a CPU training process within 3 GB at 224 px: bench/results/micro-batches.md
)
def vit_b16(
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    frames: int = 16,
    pretrained: bool = False,
) -> nn.Module:
    """ViT-B/16 (Dosovitskiy et al., ICLR 2021) from torchvision.

    ``image_size`` must be square with a side divisible by 16 (torchvision's ViT checks the input
    size). With ``pretrained=True`` and a size other than 224, the ImageNet position embeddings are
    resized bicubically. The patch projection ``conv_proj`` is adapted to ``in_channels`` like the
    CNN stems. ``frames`` is unused. Without pretrained weights the head starts at zero, as in
    torchvision (and the ViT paper's fine-tuning recipe), so the first step only trains the head.
    """
    height, width = image_size
    if height != width or height % 16:
        raise ValueError(f"vit-b16 needs a square image_size divisible by 16, got {image_size}")
    return _build_torchvision(
        "vit-b16", num_classes=num_classes, in_channels=in_channels, pretrained=pretrained, image_size=height
    )
