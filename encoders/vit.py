"""A small Vision Transformer trained from scratch (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021).

The image is cut into non-overlapping 16x16 patches by a ``Conv2d(kernel_size=16, stride=16)`` (every
pixel belongs to exactly one patch; the study's seed code built its tokens from a strided pixel
lattice instead, which discards most pixels and is not a ViT). A learned class token is prepended,
learned position embeddings are added (one per patch of the ``image_size`` grid, so 224x448 gives a
14x28 grid), the tokens pass through pre-norm transformer blocks, and a linear head reads the final
class token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from encoders.registry import register_encoder

__all__ = ["VisionTransformer", "vit"]


@dataclass(frozen=True)
class ViTConfig:
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.1


# Width 384 / 6 heads as in ViT-S (DeiT-S), 9 blocks instead of 12: 16.3 M parameters at 224x224, 3 channels, 6 classes.
VIT_SMALL_16 = ViTConfig(patch_size=16, width=384, depth=9, heads=6)


class VisionTransformer(nn.Module):
    """Patch embedding + class token + learned position embeddings + pre-norm encoder + linear head."""

    def __init__(
        self, config: ViTConfig, *, num_classes: int, in_channels: int, image_size: tuple[int, int]
    ) -> None:
        super().__init__()
        height, width = image_size
        p = config.patch_size
        if height % p or width % p:
            raise ValueError(f"image_size {image_size} is not divisible by the patch size {p}")
        self.image_size = (height, width)
        num_patches = (height // p) * (width // p)

        self.patch_embed = nn.Conv2d(in_channels, config.width, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, config.width))
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.Sequential(
            *(
                nn.TransformerEncoderLayer(
                    d_model=config.width,
                    nhead=config.heads,
                    dim_feedforward=int(config.width * config.mlp_ratio),
                    dropout=config.dropout,
                    activation="gelu",
                    batch_first=True,
                    norm_first=True,
                )
                for _ in range(config.depth)
            )
        )
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, num_classes)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"expected images of size {self.image_size}, got {tuple(x.shape[-2:])}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        tokens = self.blocks(self.dropout(tokens))
        return self.head(self.norm(tokens[:, 0]))


@register_encoder(
    "vit",
    input_kind="image",
    description="ViT, 16x16 patches, width 384, 9 blocks, from scratch, ~16.3 M",
    lr=3e-4,
    cpu_micro_batch=4,  # a CPU training process within 3 GB at 224 px: bench/results/micro-batches.md
)
def vit(
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    frames: int = 16,
    pretrained: bool = False,
) -> VisionTransformer:
    """Small ViT (width 384, depth 9, 6 heads, MLP 1536, dropout 0.1) trained from scratch, ~16.3 M parameters.

    ``image_size`` may be non-square (both sides divisible by 16); ``frames`` is unused. There are no
    pretrained weights, so ``pretrained=True`` is refused.
    """
    if pretrained:
        raise ValueError("vit is trained from scratch; there are no pretrained weights")
    return VisionTransformer(VIT_SMALL_16, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
