"""Model construction: the model registry, and weights from safetensors files.

A model is a registered name (the zoo, the hub teachers, plug-in packages) or an import path
``package.module:Callable``, built through the one plug-in rule of :mod:`crossdistill.registry`.
Weights load from safetensors only, with errors that say which keys or shapes do not fit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from crossdistill.errors import CheckpointError
from crossdistill.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", returns=nn.Module)


def build_model(
    ref: str | Callable[..., nn.Module],
    params: Mapping[str, Any] | None = None,
    where: str = "model",
) -> nn.Module:
    """The model ``ref`` (a registered name, ``package.module:Callable``, or the callable itself)
    built with validated ``params``.

    A model built from a name or an import path remembers it as ``plugin_spec`` (``{"name",
    "params"}``, and ``"weights"`` once :func:`load_weights` fills them), so a run that trains
    it can record how to rebuild it.
    """
    return MODELS.build(ref, params, where)


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
    if isinstance(getattr(model, "plugin_spec", None), dict):
        model.plugin_spec["weights"] = str(path)
