"""Encoder registry and models: shapes, gradients, parameter counts, modality reach, pretrained plumbing.

Random initialisation and small inputs only; nothing is downloaded (the pretrained paths are fed
fake checkpoints built locally).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum

from encoders import fusion_models, image2d, video3d
from encoders.registry import INPUT_KINDS, get_model, get_spec, list_models, register_encoder

NUM_CLASSES = 5  # not the default 6, so that num_classes is seen to be honoured
BATCH = 2

STUDY_KINDS = {  # the study's encoders; another registered encoder is tested from its spec alone
    "resnet18": "image",
    "googlenet": "image",
    "vgg16": "image",
    "vit-b16": "image",
    "vit": "image",
    "simple3d": "video",
    "i3d": "video",
    "videomae": "video",
    "xattn": "pair-video",
    "late": "pair-image",
    "ladder": "sequences",
}

# Dotted paths of the weights that first touch each input.
FIRST_LAYERS = {
    "resnet18": ["conv1.weight"],
    "googlenet": ["conv1.conv.weight"],
    "vgg16": ["features.0.weight"],
    "vit-b16": ["conv_proj.weight"],
    "vit": ["patch_embed.weight"],
    "simple3d": ["stem.weight"],
    "i3d": ["conv1.conv.weight"],
    "videomae": ["model.videomae.embeddings.patch_embeddings.projection.weight"],
    "xattn": ["vision_backbone.conv1.weight", "audio_backbone.features.0.weight"],
    "late": ["vision_model.conv1.weight", "audio_model.conv1.weight"],
}


@dataclass(frozen=True)
class Case:
    """One small build of an encoder and the inputs it is fed."""

    name: str
    inputs: tuple[tuple[int, ...], ...]  # input shapes, batch first
    in_channels: int = 3
    image_size: tuple[int, int] = (224, 224)
    frames: int = 16
    build: Callable[..., nn.Module] | None = None  # defaults to get_model(name, ...)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.name}-c{self.in_channels}-" + "-".join("x".join(map(str, s[1:])) for s in self.inputs)

    def model(self) -> nn.Module:
        kwargs = dict(
            num_classes=NUM_CLASSES, in_channels=self.in_channels, image_size=self.image_size, frames=self.frames
        )
        if self.build is not None:
            return self.build(**kwargs, **self.extra)
        return get_model(self.name, **kwargs)

    def tensors(self) -> list[torch.Tensor]:
        return [torch.randn(shape) for shape in self.inputs]


def _cases() -> list[Case]:
    cases = []
    for name in ("resnet18", "googlenet", "vgg16"):  # any size: 32x64 stands in for 224x448
        cases += [Case(name, ((BATCH, c, 32, 64),), in_channels=c) for c in (1, 3, 6)]
    cases += [Case("vit", ((BATCH, c, 32, 64),), in_channels=c, image_size=(32, 64)) for c in (1, 3, 6)]
    cases += [Case("vit-b16", ((BATCH, c, 32, 32),), in_channels=c, image_size=(32, 32)) for c in (1, 3, 6)]
    cases += [Case("simple3d", ((BATCH, c, 8, 32, 32),), in_channels=c) for c in (1, 3)]
    cases += [Case("simple3d", ((BATCH, 3, 32, 48, 64),))]  # three shared-conv applications
    cases += [Case("i3d", ((BATCH, c, 8, 32, 32),), in_channels=c) for c in (1, 3, 6)]
    tiny_videomae = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=8)
    cases += [
        Case(
            "videomae",
            ((BATCH, 3, 4, 32, 32),),
            image_size=(32, 32),
            frames=4,
            build=video3d.build_videomae,
            extra=tiny_videomae,
        )
    ]
    cases += [Case("xattn", ((BATCH, 4, 3, 32, 32), (BATCH, 4, 1, 32, 24)), frames=4)]
    cases += [Case("late", ((BATCH, 3, 32, 32), (BATCH, 1, 32, 48)))]
    named = {case.name for case in cases}  # any other registered encoder: a small input of its kind
    cases += [Case(name, GENERIC_INPUTS[get_spec(name).input_kind], image_size=(32, 32), frames=4)
              for name in list_models() if name not in named and get_spec(name).input_kind in GENERIC_INPUTS]
    return cases


GENERIC_INPUTS = {
    "image": ((BATCH, 3, 32, 32),),
    "video": ((BATCH, 3, 4, 32, 32),),
    "pair-image": ((BATCH, 3, 32, 32), (BATCH, 1, 32, 32)),
    "pair-video": ((BATCH, 4, 3, 32, 32), (BATCH, 4, 1, 32, 32)),
}
"""The input of an encoder without a hand-written case, by its input kind (the registry's conventions)."""


CASES = _cases()


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def test_registry_lists_every_encoder_sorted_with_its_input_kind() -> None:
    names = list_models()
    assert names == sorted(names) and set(STUDY_KINDS) <= set(names)
    for name in names:
        spec = get_spec(name)
        assert spec.name == name and spec.input_kind in INPUT_KINDS and spec.description and spec.lr > 0 and spec.weight_decay >= 0
        assert spec.input_kind == STUDY_KINDS.get(name, spec.input_kind)


def test_every_encoder_has_a_forward_case() -> None:
    sequences = {name for name in list_models() if get_spec(name).input_kind == "sequences"}  # + masks: tests/test_ladder.py
    assert {case.name for case in CASES} == set(list_models()) - sequences


def test_registry_refuses_a_duplicate_name() -> None:
    builder = get_spec("resnet18").builder
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("resnet18", input_kind="image", description="impostor")(lambda **_: nn.Identity())
    assert get_spec("resnet18").builder is builder


def test_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(KeyError) as info:
        get_model("resnet-18")
    message = str(info.value)
    assert "resnet-18" in message
    assert all(name in message for name in list_models())
    with pytest.raises(KeyError):
        get_spec("nope")


# --------------------------------------------------------------------------------------------------
# Forward + backward on every encoder and input kind
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_forward_backward_returns_logits_and_reaches_first_layer(case: Case) -> None:
    torch.manual_seed(0)
    model = case.model().train()
    logits = model(*case.tensors())
    assert logits.shape == (BATCH, NUM_CLASSES)
    probability_like = bool(
        (logits >= 0).all() and (logits <= 1).all() and torch.allclose(logits.sum(1), torch.ones(BATCH))
    )
    assert not probability_like, "models must return logits, not probabilities"

    if case.name == "vit-b16":
        # torchvision zero-initialises ViT's head (as the ViT paper does for fine-tuning), which stops
        # the very first gradient at the head; give it random values to see the gradient go further.
        nn.init.normal_(model.heads.head.weight, std=0.02)
        logits = model(*case.tensors())
    F.cross_entropy(logits, torch.arange(BATCH) % NUM_CLASSES).backward()
    params = dict(model.named_parameters())
    first = FIRST_LAYERS.get(case.name) or [next(n for n, p in model.named_parameters() if p.dim() > 1)]  # the first weight: the stem
    for path, shape in zip(first, case.inputs):
        weight = params[path]
        channels = shape[2] if case.name == "xattn" else shape[1]  # xattn: (B, T, C, H, W)
        assert weight.shape[1] == channels
        assert weight.grad is not None and weight.grad.abs().sum() > 0, f"no gradient reaches {path}"


# --------------------------------------------------------------------------------------------------
# Parameter counts (meta device: nothing allocated)
# --------------------------------------------------------------------------------------------------

# The study's figures at 6 classes, 3 channels, 224x224. GoogLeNet: the study quoted "~7 M", which is
# the ImageNet (1000-class) ballpark; torchvision's GoogLeNet without auxiliary heads has 6.62 M
# parameters with 1000 classes, of which the 1000-way classifier is 1.03 M, so 5.61 M with 6 classes.
EXPECTED_PARAMETERS = {
    "resnet18": 11.7e6,
    "googlenet": 5.6e6,
    "vgg16": 138e6,
    "vit-b16": 86e6,
    "i3d": 12.3e6,
    "vit": 16e6,
}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_parameter_count_near_the_study(name: str) -> None:
    with torch.device("meta"):
        model = get_model(name)
    assert _count(model) == pytest.approx(EXPECTED_PARAMETERS[name], rel=0.10)


def test_simple3d_has_exactly_3262_parameters() -> None:
    assert _count(get_model("simple3d")) == 3262
    assert _count(get_model("simple3d", num_classes=6, in_channels=3, frames=8, image_size=(64, 64))) == 3262


def test_simple3d_reuses_one_shared_conv() -> None:
    model = get_model("simple3d")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 2
    calls = []
    model.shared.register_forward_hook(lambda *_: calls.append(1))
    model(torch.randn(1, 3, 16, 64, 64))  # 16 -> 8 (stem) -> 4 -> 2 (shared twice)
    assert len(calls) == 2


# --------------------------------------------------------------------------------------------------
# Every part of the input reaches the logits
# --------------------------------------------------------------------------------------------------


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, rtol=0, atol=1e-6)


def _eval_with_batch_statistics(model: nn.Module, *inputs: torch.Tensor) -> nn.Module:
    """Eval mode, with BatchNorm running statistics taken from ``inputs`` in one train-mode pass.

    With the default running statistics (mean 0, var 1) the activations of a randomly initialised
    torchvision GoogLeNet (weights ~ N(0, 0.01)) fade to nothing in eval mode and every input gives the
    classifier's bias; real statistics make the eval-mode comparison meaningful.
    """
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: after one pass, the batch's statistics
    model.train()
    with torch.no_grad():
        model(*inputs)
    return model.eval()


@pytest.mark.parametrize("name", [n for n in list_models() if get_spec(n).input_kind.startswith("pair")])
def test_pair_models_use_both_modalities(name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    torch.manual_seed(0)
    vision, audio = case.tensors()
    model = _eval_with_batch_statistics(case.model(), vision, audio)
    with torch.no_grad():
        both = model(vision, audio)
        assert _differs(both, model(vision, torch.zeros_like(audio))), "audio does not reach the logits"
        assert _differs(both, model(torch.zeros_like(vision), audio)), "vision does not reach the logits"


@pytest.mark.parametrize("name", [n for n in list_models() if get_spec(n).input_kind == "image" and not get_spec(n).square_input])
def test_side_by_side_input_uses_both_halves(name: str) -> None:
    """A 224x448 face|spectrogram image, scaled down to 32x64: each half must reach the logits."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 64)
    model = _eval_with_batch_statistics(get_model(name, num_classes=NUM_CLASSES, image_size=(32, 64)), x)
    left_zeroed, right_zeroed = x.clone(), x.clone()
    left_zeroed[..., :32] = 0
    right_zeroed[..., 32:] = 0
    with torch.no_grad():
        full = model(x)
        assert _differs(full, model(left_zeroed)), "left half does not reach the logits"
        assert _differs(full, model(right_zeroed)), "right half does not reach the logits"


@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
def test_cnn_takes_full_size_side_by_side_input(name: str) -> None:
    model = get_model(name, in_channels=6, image_size=(224, 448)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 6, 224, 448)).shape == (1, 6)


def test_transformers_refuse_the_wrong_size() -> None:
    with pytest.raises(ValueError):
        get_model("vit-b16", image_size=(224, 448))
    with pytest.raises(ValueError):
        get_model("videomae", image_size=(224, 448))
    model = get_model("vit", image_size=(32, 64))
    with pytest.raises(ValueError):
        model(torch.randn(1, 3, 32, 32))


def test_models_without_weights_refuse_pretrained() -> None:
    for name in ("vit", "simple3d"):
        with pytest.raises(ValueError, match="no pretrained weights"):
            get_model(name, pretrained=True)


def test_xattn_exposes_trainer_hooks() -> None:
    model = get_model("xattn", frames=4)
    assert model.label_smoothing == 0.2
    assert list(model.pretrained_parameters()) == []  # random init: nothing came from ImageNet


# --------------------------------------------------------------------------------------------------
# Pretrained plumbing, fed locally built fake checkpoints (nothing is downloaded)
# --------------------------------------------------------------------------------------------------

FAKE_CHECKPOINTS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": tvm.resnet18,
    "googlenet": lambda: tvm.googlenet(aux_logits=True, init_weights=True),  # real checkpoint has aux heads
    "vit-b16": tvm.vit_b_16,  # 224x224 checkpoint, loaded at 32x32 below
    "vgg16": tvm.vgg16,  # torchvision's checkpoint into avstore's own VGG16
}


@pytest.mark.parametrize("name", sorted(FAKE_CHECKPOINTS))
def test_pretrained_stem_keeps_the_rgb_filters(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    state = FAKE_CHECKPOINTS[name]().state_dict()
    monkeypatch.setattr(image2d, "load_torchvision_weights", lambda weights: dict(state))
    stem_key = FIRST_LAYERS[name][0]
    rgb = state[stem_key]
    size = (32, 32)
    grey = get_model(name, num_classes=NUM_CLASSES, in_channels=1, image_size=size, pretrained=True)
    stacked = get_model(name, num_classes=NUM_CLASSES, in_channels=6, image_size=size, pretrained=True)
    torch.testing.assert_close(grey.state_dict()[stem_key], rgb.sum(1, keepdim=True))
    torch.testing.assert_close(stacked.state_dict()[stem_key], torch.cat([rgb, rgb], 1) / 2)
    # the rest of the network is the checkpoint's, the head is new
    own = grey.state_dict()
    shared = [k for k in own if k in state and k != stem_key and state[k].shape == own[k].shape]
    assert len(shared) > 10
    for key in shared[-5:]:
        torch.testing.assert_close(grey.state_dict()[key], state[key])
    with torch.no_grad():
        assert grey.eval()(torch.randn(1, 1, *size)).shape == (1, NUM_CLASSES)


def test_vgg16_built_here_is_torchvision_s_layer_for_layer_and_seed_for_seed() -> None:
    """encoders/image2d.VGG16 replaces torchvision's builder only so that a vgg16 run does not import torchvision:
    the same parameter names and shapes, the same weights from a seed, the same logits."""
    torch.manual_seed(0)
    ours = image2d.VGG16(num_classes=NUM_CLASSES).eval()
    torch.manual_seed(0)
    theirs = tvm.vgg16(weights=None, num_classes=NUM_CLASSES).eval()
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(reference)
    assert all(torch.equal(mine[k], reference[k]) for k in reference)
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_a_vgg16_run_never_imports_torchvision() -> None:
    """torchvision's ops import torch._dynamo and triton: 0.16 GB of the process that trains vgg16 on a CPU."""
    import subprocess
    import sys

    script = ("import sys, torch, encoders\n"
              "from encoders.registry import get_model\n"
              "get_model('vgg16', num_classes=6, in_channels=3, image_size=(64, 128))(torch.zeros(1, 3, 64, 128))\n"
              "import encoders.train\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'triton')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_i3d_inflates_googlenet(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    state = tvm.googlenet(aux_logits=True, init_weights=True).state_dict()
    monkeypatch.setattr(video3d, "load_torchvision_weights", lambda weights: dict(state))
    model = get_model("i3d", num_classes=NUM_CLASSES, pretrained=True).eval()
    stem = model.conv1.conv.weight
    assert stem.shape == (64, 3, 7, 7, 7)
    torch.testing.assert_close(stem.sum(2), state["conv1.conv.weight"])
    inflated = model.inception4a.branch2[1].conv.weight  # 3x3 -> 3x3x3
    torch.testing.assert_close(inflated[:, :, 1] * 3, state["inception4a.branch2.1.conv.weight"])
    torch.testing.assert_close(model.inception5b.branch1.bn.running_var, state["inception5b.branch1.bn.running_var"])


def test_pretrained_without_network_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> Any:
        raise URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    for name in ("resnet18", "i3d"):
        with pytest.raises(RuntimeError, match="network access or a pre-populated torch hub cache"):
            get_model(name, pretrained=True)

    import transformers

    monkeypatch.setattr(transformers.VideoMAEForVideoClassification, "from_pretrained", lambda *a, **k: offline())
    with pytest.raises(RuntimeError, match="network access"):
        get_model("videomae", pretrained=True)


def test_late_fusion_averages_the_two_models() -> None:
    torch.manual_seed(0)
    model = fusion_models.build_late_fusion(num_classes=NUM_CLASSES).eval()
    vision, audio = torch.randn(1, 3, 32, 32), torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        expected = (model.vision_model(vision) + model.audio_model(audio)) / 2
        torch.testing.assert_close(model(vision, audio), expected)
