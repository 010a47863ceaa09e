"""A CPU step in several forward/backward passes (micro-batches) is the whole batch's step.

Why it matters: a CPU run holds only one pass's activations (vit's batch of 16 alone would take ~4 GB), and the
comparison stays valid only if the optimiser sees exactly the batch's gradient, not an average of averages.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.device import plan_for
from encoders.registry import get_model, get_spec
from encoders.train import TrainConfig, backward_passes, samples_per_pass
from stores.torchdata import recipe_for


def gradients(model: torch.nn.Module, raw: list[torch.Tensor], labels: torch.Tensor, per_pass: int, soft: dict | None = None) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    plan = plan_for(model, "cpu", amp="off", compile="off")
    recipe = recipe_for("image", "av", "concat")
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-1, reduction="sum")
    positions = np.arange(len(labels))
    loss, _ = backward_passes(model, model, False, recipe, plan, raw, labels, positions, loss_fn, soft or {}, per_pass)
    return float(loss), [p.grad.clone() for p in model.parameters()]


def test_passes_give_the_whole_batch_loss_and_gradient_even_with_unlabelled_clips():
    """vit has no BatchNorm, so passes of 3, 3 and 1 samples must give the gradient of the batch of 7 to float
    rounding; dividing each pass by its own labelled clips (an average of averages) would not."""
    torch.manual_seed(0)
    model = get_model("vit", num_classes=6, in_channels=3, image_size=(32, 64)).eval()  # dropout off: the same function per pass
    raw = [torch.randint(0, 256, (7, 32, 64, 3), dtype=torch.uint8)]
    labels = torch.tensor([0, 1, 2, -1, 4, 5, 1])  # one clip without its label (--labelled-fraction)
    whole_loss, whole = gradients(model, raw, labels, per_pass=7)
    parts_loss, parts = gradients(model, raw, labels, per_pass=3)
    assert parts_loss == pytest.approx(whole_loss, rel=1e-6)
    for a, b in zip(whole, parts):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
    assert max(float(g.abs().max()) for g in whole) > 1e-4  # the comparison is not between zeros


def test_a_cpu_run_takes_the_encoders_micro_batch_scaled_to_its_inputs_and_a_gpu_the_whole_batch():
    vit = get_model("vit", num_classes=6, image_size=(224, 448))
    assert get_spec("vit").cpu_micro_batch is not None
    config = TrainConfig(encoder="vit", batch_size=16)
    per_pass, why = samples_per_pass(config, (224, 448), 16, "cpu", vit)
    assert per_pass == get_spec("vit").cpu_micro_batch < 16 and "summed" in why and "BatchNorm" not in why
    small, _ = samples_per_pass(config, (112, 224), 16, "cpu", vit)  # a quarter of the pixels: four times the samples
    assert small == min(16, 4 * per_pass)
    assert samples_per_pass(config, (224, 448), 16, "cuda", vit)[0] == 16
    asked, why = samples_per_pass(TrainConfig(encoder="vit", batch_size=16, micro_batch=5), (224, 448), 16, "cuda", vit)
    assert asked == 5 and "--micro-batch" in why


def test_batchnorm_models_say_their_statistics_are_the_passes_and_the_ladder_takes_whole_batches():
    resnet = get_model("resnet18", num_classes=6)
    _, why = samples_per_pass(TrainConfig(encoder="resnet18", batch_size=16, micro_batch=4), (224, 448), 16, "cpu", resnet)
    assert "BatchNorm" in why
    ladder = get_model("ladder", num_classes=6, in_channels=8)
    assert samples_per_pass(TrainConfig(encoder="ladder", batch_size=16, micro_batch=4), (224, 224), 16, "cpu", ladder)[0] == 16


def test_micro_batch_below_one_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="--micro-batch 0 is below 1"):
        TrainConfig(encoder="vit", micro_batch=0).resolved()
