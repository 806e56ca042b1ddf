"""Model construction from a recipe: registered zoo names or ``package.module:Callable``.

No ``eval``: a reference is either a registered name or an import path resolved with importlib.
Weights load from safetensors only, with errors that say which keys or shapes do not fit.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from crossdistill.errors import CheckpointError, ConfigError, UnknownNameError
from crossdistill.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def resolve_model(ref: str) -> Callable[..., nn.Module]:
    """A registered name (``"resnet"``) or an import path (``"my_pkg.models:make_net"``)."""
    if ":" not in ref:
        import crossdistill.models.hub  # registers the real teachers
        import crossdistill.models.zoo  # noqa: F401  (registers the zoo)

        return MODELS.get(ref)
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r} for model {ref!r}: {exc}",
            hint="the module must be importable from the current environment (pip install it "
            "or add its folder to PYTHONPATH)",
        ) from None
    except Exception as exc:  # a SyntaxError or an error at the module's import time
        raise ConfigError(
            f"cannot import module {module_name!r} for model {ref!r}: {type(exc).__name__}: {exc}",
            hint=f"fix the module (run `python -c 'import {module_name}'` to see the traceback)",
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnknownNameError(f"{module_name!r} has no attribute {attr!r} (model {ref!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model {ref!r} is not callable")
    return obj


def accepts_param(ref: str, name: str) -> bool:
    """Whether the model ``ref`` takes a keyword parameter ``name`` (``init_from``, ...)."""
    try:
        return name in inspect.signature(resolve_model(ref)).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a readable signature
        return False


def build_model(ref: str, params: Mapping[str, Any] | None = None) -> nn.Module:
    """Call the model factory with ``params``; a wrong keyword names the accepted ones."""
    factory = resolve_model(ref)
    try:
        model = factory(**dict(params or {}))
    except Exception as exc:  # a wrong keyword, a bad value, or the factory's own error
        raise ConfigError(
            f"cannot build model {ref!r} with params {dict(params or {})}: "
            f"{'' if isinstance(exc, TypeError) else type(exc).__name__ + ': '}{exc}",
            hint="check the model's params in the recipe (--debug shows the traceback)",
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {ref!r} returned a {type(model).__name__}, not a torch Module")
    return model


def load_weights(
    model: nn.Module, path: str | Path, strict: bool = True, where: str = "weights file"
) -> None:
    """Load a safetensors state dict into ``model`` with a readable error on any mismatch.

    ``where`` names the setting the path came from (``teacher.weights``) in error messages.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{where}: {str(path)!r} does not exist",
            hint="train that model first (e.g. `crossdistill run recipes/fashion_mnist/"
            "teacher.yaml`) or fix the path",
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc})",
            hint="crossdistill reads weights only from .safetensors files; convert other formats "
            "with safetensors.torch.save_file(model.state_dict(), path)",
        ) from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if wrong or (strict and (missing or unexpected)):
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"] if unexpected else []
        parts += [f"shape mismatch: {'; '.join(wrong[:3])}"] if wrong else []
        raise CheckpointError(
            f"weights in {path} do not fit {type(model).__name__}: {', '.join(parts)}",
            hint="check that the recipe's `model:` and `params:` are those the weights were "
            "trained with",
        )
    model.load_state_dict(state, strict=strict)
