"""Encoders of the comparison study; importing this package registers them all (see ``encoders.registry``).

Every module of the package that registers an encoder (a line starting ``@register_encoder(``) is imported here, so
a new encoder is one new file in this folder; the package's other modules (the trainer, reports) are not imported.
"""

import importlib
import pkgutil
from pathlib import Path

from encoders.registry import EncoderSpec, InputKind, get_model, get_spec, list_models, register_encoder


def _import_encoder_modules() -> None:
    folder = Path(__file__).parent
    for module in pkgutil.iter_modules([str(folder)]):
        source = folder / f"{module.name}.py"
        if source.is_file() and "\n@register_encoder(" in source.read_text(encoding="utf-8"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_encoder_modules()

__all__ = ["EncoderSpec", "InputKind", "get_model", "get_spec", "list_models", "register_encoder"]
