"""Which device a run computes on: the one answer to `--device auto|cpu|cuda` for extract, embed and train."""

from __future__ import annotations

from pathlib import Path

GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/kfd")  # NVIDIA's driver, AMD's ROCm


class DeviceError(ValueError):
    """A --device no run here can use; the message names the fix."""


def resolve_device(device: str) -> str:
    """`auto` is cuda when torch sees a GPU, else cpu; `cuda` (or `cuda:N`) must be there; anything else is refused.

    Without any GPU driver `auto` is cpu without importing torch: that import costs seconds, and a run with
    nothing left to compute (a no-op re-run of extract) should not pay it."""
    if device == "cpu" or (device == "auto" and not any(Path(p).exists() for p in GPU_DRIVER_FILES)):
        return "cpu"
    if device != "auto" and device != "cuda" and not device.startswith("cuda:"):
        raise DeviceError(f"unknown --device '{device}'; choose auto, cpu or cuda")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device} asked for, but torch sees no CUDA GPU here; use --device cpu (or auto)")
    return device
