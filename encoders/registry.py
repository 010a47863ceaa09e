"""The encoder registry: the one way to name, list and build the models of the comparison study.

Modelled on torchvision's ``models/_api.py``: each encoder module decorates its public builder with
:func:`register_encoder`, which records an :class:`EncoderSpec` under a unique name and refuses a
second registration of the same name. Everything else (the trainer, the CLI's ``--model`` choices)
goes through :func:`get_model`, :func:`get_spec` and :func:`list_models`.

Input conventions, which the trainer follows:

* ``"image"`` models take float tensors ``(B, C, H, W)`` with ``C`` in {1, 3, 6} and
  ``(H, W) == image_size`` (non-square allowed where the architecture allows it, e.g. 224x448
  side-by-side fusion images for the CNNs).
* ``"video"`` models take ``(B, C, T, H, W)``.
* ``"pair-image"`` and ``"pair-video"`` models are called as ``model(vision, audio)``: the first with
  one face image and the whole-clip spectrogram, the second with T face crops and T spectrogram chunks.
* ``"sequences"`` models (seed 002's ladder) are called as ``model(lld, lld_mask, embedding, found)``: ComParE
  LLD frames ``(B, F, 130)`` with their validity ``(B, F)``, face embeddings ``(B, T, D)`` with ``(B, T)``;
  ``in_channels`` is ``D``. A model with its own training objective (``own_objective = True``) returns
  ``{"loss", "terms"}`` when also given ``labels=`` (-1 for an unlabelled clip).

Every model returns raw logits ``(B, num_classes)``; none applies a softmax (the study's seed code
applied softmax before the cross-entropy loss, a defect not carried over).

Every builder takes the same keyword-only arguments as :func:`get_model`
(``num_classes, in_channels, image_size, frames, pretrained``); a builder ignores the ones that do
not concern its architecture (a 2D CNN does not care about ``frames``) and raises ``ValueError`` for
values it cannot honour (``pretrained=True`` for a model trained from scratch, for example).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from torch import nn

__all__ = [
    "EncoderSpec",
    "InputKind",
    "UnknownEncoderError",
    "encoder_config",
    "get_model",
    "get_spec",
    "list_models",
    "print_encoders",
    "register_encoder",
]

InputKind = Literal["image", "video", "pair-image", "pair-video", "sequences"]
INPUT_KINDS: tuple[str, ...] = ("image", "video", "pair-image", "pair-video", "sequences")  # sequences: seed 002 (encoders/ladder.py)

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class EncoderSpec:
    """What the registry knows about one encoder."""

    name: str
    input_kind: InputKind
    description: str
    builder: Callable[..., nn.Module]
    square_input: bool = False  # ViT-B/16 and VideoMAE fix a square image size; side-by-side S x 2S won't fit
    options: type | None = None  # the encoder's own settings: a frozen dataclass its builder takes as `config`
    lr: float = 1e-3  # Adam's step when a run gives none: large or attention models take a smaller one
    weight_decay: float = 0.0  # Adam's weight decay when a run gives none
    cpu_micro_batch: int | None = None  # samples per forward/backward pass on a CPU at 224 px, 16 frames (None: a whole batch)


class UnknownEncoderError(KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return str(self.args[0]) if self.args else ""


_REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(name: str, *, input_kind: InputKind, description: str, square_input: bool = False,
                     options: type | None = None, lr: float = 1e-3, weight_decay: float = 0.0,
                     cpu_micro_batch: int | None = None) -> Callable[[Builder], Builder]:
    """Decorator that registers a model builder under ``name``.

    ``options`` is the encoder's own settings dataclass (the ladder's LadderConfig): :func:`get_model` builds it
    from a run's ``encoder_options`` and passes it to the builder as ``config``, so the trainer's configuration
    holds no encoder-specific fields. ``lr`` and ``weight_decay`` are the encoder's training defaults (Adam), which a
    run's own ``--lr`` / ``--weight-decay`` override. ``cpu_micro_batch``: how many samples of the store defaults
    (224 px, 16 frames) one forward/backward pass takes on a CPU so that a training process stays within 3 GB, measured
    with ``bench/scale.py``; a step sums the gradients of its passes (encoders/train.py, ``samples_per_pass``).

    Raises:
        ValueError: ``name`` is already registered, or ``input_kind`` is not one of the known kinds.
    """
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, not {input_kind!r}")

    def wrapper(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"an encoder named {name!r} is already registered")
        _REGISTRY[name] = EncoderSpec(name=name, input_kind=input_kind, description=description, builder=builder,
                                      square_input=square_input, options=options, lr=lr, weight_decay=weight_decay,
                                      cpu_micro_batch=cpu_micro_batch)
        return builder

    return wrapper


def list_models() -> list[str]:
    """The registered encoder names, sorted."""
    return sorted(_REGISTRY)


def print_encoders() -> None:
    """`cli.py encoders`: each registered encoder, its input kind and what it is."""
    for name in list_models():
        spec = get_spec(name)
        print(f"{name:10s} {spec.input_kind:11s} {spec.description}")


def get_spec(name: str) -> EncoderSpec:
    """The :class:`EncoderSpec` registered under ``name``.

    Raises:
        UnknownEncoderError: (a ``KeyError``) ``name`` is not registered; the message lists the valid names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEncoderError(
            f"unknown encoder {name!r}; valid names: {', '.join(list_models())}"
        ) from None


def get_model(
    name: str,
    *,
    num_classes: int = 6,
    in_channels: int = 3,
    image_size: tuple[int, int] = (224, 224),
    frames: int = 16,
    pretrained: bool = False,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build the encoder registered under ``name``.

    Args:
        name: a name from :func:`list_models`.
        num_classes: size of the logit vector.
        in_channels: channels of the (vision) input; the 2D CNNs accept 1, 3 or 6.
        image_size: ``(H, W)`` of the input frames / images.
        frames: number of frames ``T`` of a video or frame-sequence input.
        pretrained: start from published weights (needs network access or a filled cache).
        options: the encoder's own settings by field name (see :func:`encoder_config`).

    Raises:
        UnknownEncoderError: (a ``KeyError``) for an unknown name.
        ValueError: for options the architecture cannot honour.
    """
    spec = get_spec(name)
    config = encoder_config(name, options)  # refuses options an encoder does not have
    extra = {} if spec.options is None else {"config": config}
    return spec.builder(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=tuple(image_size),
        frames=frames,
        pretrained=pretrained,
        **extra,
    )


def encoder_config(name: str, options: Mapping[str, Any] | None = None) -> Any:
    """The settings object of encoder ``name`` from ``options`` (None for an encoder without settings).

    Lists become tuples (a run's metrics.json stores tuples as lists), so a recorded run rebuilds the same model.

    Raises:
        ValueError: an option the encoder does not have (the message lists those it has), or a value its
            settings refuse.
    """
    spec = get_spec(name)
    options = dict(options or {})
    if spec.options is None:
        if options:
            raise ValueError(f"encoder {name} takes no encoder options; drop {', '.join(sorted(options))}: an option of another encoder")
        return None
    known = {f.name for f in dataclasses.fields(spec.options)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"encoder {name} has no option {', '.join(unknown)}; its options are {', '.join(sorted(known))}")
    return spec.options(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
