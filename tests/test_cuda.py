"""GPU paths: batched MTCNN on CUDA and bf16 training. Skipped cleanly where torch sees no CUDA device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")]


def test_mtcnn_on_cuda_finds_the_same_faces_as_on_cpu(grid_dir):
    from pipeline.faces import FaceConfig, track_faces
    from pipeline.media import decode_frames, probe

    video = str(sorted(grid_dir.glob("*.mpg"))[0])
    info = probe(video)
    frames = decode_frames(video, list(range(0, 64, 4)) + [info.n_frames // 2], info.width, info.height)
    config = FaceConfig(size=112)
    cpu, gpu = track_faces(frames[:-1], frames[-1], config, "cpu"), track_faces(frames[:-1], frames[-1], config, "cuda")
    assert gpu is not None and gpu.found.all()
    assert np.abs(cpu.boxes - gpu.boxes).max() < 3.0  # pixels


def test_bf16_training_step_on_cuda_returns_finite_logits():
    from encoders.registry import get_model

    model = get_model("resnet18", num_classes=6, in_channels=3, image_size=(64, 128)).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.arange(4, device="cuda"))
    loss.backward()
    assert torch.isfinite(logits.float()).all() and model.fc.weight.grad is not None
