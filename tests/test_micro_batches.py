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


def test_linear_layers_adding_grads_in_place_give_autograds_gradients_and_outputs():
    """The swap may change where a backward writes, never what: passes of a (B, N, C) input (vit-b16's and
    videomae's MLPs) and a frozen bias must give autograd's own summed gradients, for the layer's weights and
    for the layers before it, with the same parameter objects (the optimiser keeps them) and names."""
    from encoders.grad_in_place import LinearAddingGradInPlace, add_linear_grads_in_place

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(8, 48), torch.nn.GELU(), torch.nn.Linear(48, 40), torch.nn.Linear(40, 3))
    swapped = torch.nn.Sequential(*[torch.nn.Linear(m.in_features, m.out_features) if isinstance(m, torch.nn.Linear) else m for m in plain])
    swapped.load_state_dict(plain.state_dict())
    for model in (plain, swapped):
        model[3].bias.requires_grad_(False)
    params = list(swapped.parameters())
    assert add_linear_grads_in_place(swapped, min_parameters=100) == 3
    assert all(isinstance(swapped[i], LinearAddingGradInPlace) for i in (0, 2, 3))
    assert [id(p) for p in swapped.parameters()] == [id(p) for p in params]
    assert list(swapped.state_dict()) == list(plain.state_dict())
    x = torch.randn(5, 7, 8)
    for model in (plain, swapped):
        for part in (slice(0, 2), slice(2, 4), slice(4, 5)):  # three passes into the same .grad
            model(x[part]).pow(2).sum().backward()
    torch.testing.assert_close(swapped(x), plain(x))
    for (name, a), b in zip(plain.named_parameters(), swapped.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)
    assert swapped[3].bias.grad is None and float(swapped[0].weight.grad.abs().max()) > 1e-3


def test_a_later_pass_allocates_no_weight_sized_gradient():
    """The point of the swap (vgg16 on a CPU: 0.41 GB per pass): with a gradient already held, a pass adds into
    it. Autograd's own Linear allocates a new weight-sized tensor in that backward; the profiler sees it."""
    from torch.profiler import ProfilerActivity, profile

    from encoders.grad_in_place import add_linear_grads_in_place

    def largest_allocation(model: torch.nn.Module) -> int:
        x = torch.randn(2, 1024)
        model(x).sum().backward()  # the first pass: .grad is made
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(x).sum().backward()
        return max(e.cpu_memory_usage for e in prof.events())

    weight_bytes = 1024 * 1024 * 4
    layer = torch.nn.Linear(1024, 1024)
    assert largest_allocation(layer) >= weight_bytes  # the probe sees autograd's transient
    swapped = torch.nn.Sequential(torch.nn.Linear(1024, 1024))
    assert add_linear_grads_in_place(swapped) == 1
    assert largest_allocation(swapped) < weight_bytes / 100


def test_videomae_recomputes_its_activations_on_a_cpu_in_passes_with_the_same_gradients():
    """videomae held 0.95 GB of activations per 16-frame sample, which put a CPU run at 3.5 GB: in passes each
    further layer saves only its input for the backward (the bytes saved grow far slower with depth), and the
    gradients stay autograd's own."""
    from encoders.grad_in_place import add_linear_grads_in_place
    from encoders.train import lighten_cpu_passes
    from encoders.video3d import build_videomae

    def run(checkpointed: bool, layers: int) -> tuple[int, list[torch.Tensor], str]:
        torch.manual_seed(0)
        model = build_videomae(image_size=(32, 32), frames=4, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                               intermediate_size=64, patch_size=16).train()
        note = lighten_cpu_passes(model) if checkpointed else ""
        if checkpointed:  # and its linear layers, too small here for lighten's threshold, swapped as videomae's are
            assert add_linear_grads_in_place(model, min_parameters=1) > 0
        saved = []
        x = torch.rand(3, 3, 4, 32, 32)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
            for part in (slice(0, 2), slice(2, 3)):
                model(x[part]).pow(2).sum().backward()
        return sum(saved), [p.grad for p in model.parameters()], note

    plain_bytes, plain, _ = run(False, 6)
    lighter_bytes, lighter, note = run(True, 6)
    assert "recomputed" in note
    per_layer_plain = (plain_bytes - run(False, 2)[0]) / 4
    per_layer_lighter = (lighter_bytes - run(True, 2)[0]) / 4
    assert per_layer_lighter < per_layer_plain / 10
    assert all(g is not None for g in plain + lighter)  # every parameter trains, the swapped ones too
    for a, b in zip(plain, lighter):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_vgg16_recomputes_each_block_on_a_cpu_in_passes_with_the_same_gradients():
    """vgg16 is the CPU run nearest 3 GB (bench/results/micro-batches.md): in passes each block of convolutions
    keeps only its input for the backward, and the gradients stay autograd's own."""
    from encoders.image2d import VGG16
    from encoders.train import lighten_cpu_passes

    def run(checkpointed: bool) -> tuple[int, list[torch.Tensor], str]:
        torch.manual_seed(0)
        model = VGG16(num_classes=6).eval()  # eval: no dropout, so both runs see the same function
        note = lighten_cpu_passes(model) if checkpointed else ""
        saved = []
        x = torch.rand(1, 3, 64, 96)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
            model(x).pow(2).sum().backward()
        features = [p.grad for p in model.features.parameters()]
        return sum(b for b in saved if b < 50_000_000), features, note  # the activations, not the 0.41 GB fc6 weight

    plain_bytes, plain, _ = run(False)
    lighter_bytes, lighter, note = run(True)
    assert "recomputed" in note
    assert lighter_bytes < plain_bytes / 3
    for a, b in zip(plain, lighter):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
