"""Encoders of the comparison study; importing this package registers them all (see ``encoders.registry``)."""

from encoders import fusion_models, image2d, ladder, video3d, vit  # noqa: F401  (imported for their registrations)
from encoders.registry import EncoderSpec, InputKind, get_model, get_spec, list_models, register_encoder

__all__ = ["EncoderSpec", "InputKind", "get_model", "get_spec", "list_models", "register_encoder"]
