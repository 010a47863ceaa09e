"""One place that prepares a model for its device: memory format by model kind, autocast, compile.

Why one function: the seed trainer turned every model channels-last whenever the device was CUDA, which
crashes every Conv3d model (`required rank 4 tensor to use channels_last format`), and no CPU test could
see it. Here the decision is a pure function of the model's layers, made the same way on every device, so
the CPU tests run exactly what a GPU run runs (CPU has bf16 autocast and channels-last too).

- memory format: channels-last for 4-D convolution nets (cuDNN's fast NHWC kernels); none for models with
  Conv3d layers (channels-last-3d kernels are not faster for these small 3-D nets and need 5-D inputs
  throughout) and none for transformers (a patch embedding is their only convolution);
- autocast: bf16 on CUDA by default (no loss scaler needed), float32 on CPU unless asked;
- torch.compile: only on CUDA, for models large enough that compilation pays back within an epoch; never by
  default on CPU (minutes of compilation for a few seconds of training).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from stores.torchdata import InputRecipe, ablate, to_model_inputs

AMP_CHOICES = ("auto", "bf16", "off")
COMPILE_CHOICES = ("auto", "on", "off")
COMPILE_MIN_PARAMETERS = 5_000_000  # below this a step is launch-bound; compiling costs more than it saves


@dataclass(frozen=True)
class DevicePlan:
    """How a model runs on `device`: its memory format, the autocast dtype (None: float32), compiled or not."""

    device: str
    memory_format: torch.memory_format
    amp_dtype: torch.dtype | None
    compile: bool

    def autocast(self):
        """The forward pass's context: autocast when `amp_dtype` is set, else nothing (nanoGPT's way)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=self.amp_dtype)

    def inputs(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Model inputs in the model's memory format (4-D ones only: the format is a 4-D layout)."""
        if self.memory_format is not torch.channels_last:
            return xs
        return [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in xs]


def memory_format_for(model: nn.Module) -> torch.memory_format:
    """channels_last for a 4-D convolution net, contiguous for 3-D convolution nets and transformers."""
    modules = list(model.modules())
    if any(isinstance(m, nn.Conv3d) for m in modules):
        return torch.contiguous_format
    conv2d = sum(isinstance(m, nn.Conv2d) for m in modules)
    return torch.channels_last if conv2d >= 3 else torch.contiguous_format  # a ViT has one: its patch embedding


def plan_for(model: nn.Module, device: str, *, amp: str = "auto", compile: str = "auto") -> DevicePlan:
    """The plan for `model` on `device`; `amp` in AMP_CHOICES, `compile` in COMPILE_CHOICES."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"--amp takes {' | '.join(AMP_CHOICES)}, not '{amp}'")
    if compile not in COMPILE_CHOICES:
        raise ValueError(f"--compile takes {' | '.join(COMPILE_CHOICES)}, not '{compile}'")
    cuda = device.startswith("cuda")
    amp_dtype = torch.bfloat16 if amp == "bf16" or (amp == "auto" and cuda) else None
    if compile == "auto":
        compiled = cuda and sum(p.numel() for p in model.parameters()) >= COMPILE_MIN_PARAMETERS
    else:
        compiled = compile == "on"
    return DevicePlan(device=device, memory_format=memory_format_for(model), amp_dtype=amp_dtype, compile=compiled)


def prepare_model(model: nn.Module, plan: DevicePlan) -> nn.Module:
    """Move `model` to the plan's device and memory format (in place); the caller compiles the wrapper.

    Returned unwrapped so that the checkpoint holds plain parameter names; see `compiled`.
    """
    model.to(plan.device)
    if plan.memory_format is torch.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def compiled(model: nn.Module, plan: DevicePlan) -> nn.Module:
    """`model` compiled when the plan says so (after DDP wrapping, as PyTorch recommends), else itself."""
    return torch.compile(model) if plan.compile else model


def prepare(recipe: InputRecipe, raw: list[torch.Tensor], plan: DevicePlan | None = None, ablation: str | None = None) -> list[torch.Tensor]:
    """Stored uint8 tensors (already on the device) -> the model's float inputs, in the plan's memory format."""
    inputs = to_model_inputs(recipe, raw)
    if ablation:
        inputs = ablate(recipe, inputs, raw, ablation)
    return plan.inputs(inputs) if plan is not None else inputs
