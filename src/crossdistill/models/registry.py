"""Model construction: the model registry, and weights from files.

A model is a registered name (the zoo, the hub teachers, plug-in packages) or an import path
``package.module:Callable``, built through the one plug-in rule of :mod:`crossdistill.registry`.
Weights load from safetensors files or PyTorch state dicts (``torch.load(weights_only=True)``:
tensors only, never code), with errors that say which keys or shapes do not fit.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from crossdistill.config import WeightsSpec
from crossdistill.errors import CheckpointError
from crossdistill.registry import Registry

log = logging.getLogger(__name__)

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


# Where training code commonly nests the state dict in a checkpoint dict, in the order tried.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")

_SAVE_HINT = "in Python, where you trust the file: torch.save(model.state_dict(), path)"


def load_weights(
    model: nn.Module,
    weights: str | Path | WeightsSpec,
    strict: bool | None = None,
    where: str = "weights file",
) -> None:
    """Load a weights file into ``model``, with a readable error on any mismatch.

    ``weights`` is a path or a :class:`~crossdistill.config.WeightsSpec` (the path, a prefix to
    strip, prefixes to rename). The file is a ``.safetensors`` file or a PyTorch state dict
    (``.pt``/``.pth``/``.bin``), plain or under ``state_dict``/``model``/``model_state_dict``.
    ``strict`` (default: the spec's, else True) requires every model tensor in the file and
    nothing else; shapes must always match. ``where`` names the setting the weights came from
    (``teacher.weights``) in error messages.
    """
    spec = _weights_spec(weights)
    strict = spec.strict if strict is None else strict
    state, _ = read_state_dict(spec, where, spec.key)
    _check_fit(model, state, spec.path, strict, where)
    _check_values(model, state, spec.path, where)
    model.load_state_dict(state, strict=strict)
    if isinstance(getattr(model, "plugin_spec", None), dict):
        # a run rebuilds the model from this record: a plain path when that says everything
        if isinstance(weights, WeightsSpec) or not strict:
            used = spec.model_copy(update={"strict": strict})
            model.plugin_spec["weights"] = used.model_dump(mode="json", exclude_defaults=True)
        else:
            model.plugin_spec["weights"] = str(spec.path)


def read_state_dict(
    weights: str | Path | WeightsSpec, where: str = "weights file", key: str | None = None
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors of a weights file (see :func:`load_weights`), its keys mapped by the spec's
    ``strip_prefix`` and ``rename``; and the key of the file's dict that held them (None: the
    file is the state dict). ``key`` names that key instead of looking for a common one.
    """
    spec = _weights_spec(weights)
    path = spec.path
    if path.is_dir():
        raise CheckpointError(
            f"{where}: {str(path)!r} is a folder, not a weights file",
            hint="name the file inside it (e.g. model.safetensors or pytorch_model.bin)",
        )
    if not path.is_file():
        raise CheckpointError(
            f"{where}: {str(path)!r} does not exist",
            hint="train that model first (e.g. `crossdistill run recipes/fashion_mnist/"
            "teacher.yaml`) or fix the path",
        )
    try:
        safetensors = _is_safetensors(path)
    except OSError as exc:
        raise CheckpointError(
            f"{where}: {path} cannot be read ({exc.strerror})",
            hint="check the file's permissions",
        ) from None
    if safetensors:
        if key is not None:
            raise CheckpointError(
                f"{where}: {path} is a safetensors file: no key ({key!r}) holds its tensors",
                hint="leave out the key",
            )
        state, used = _read_safetensors(path, where), None
    else:
        state, used = _find_state_dict(_torch_load(path, where), path, where, key)
    return _map_keys(state, spec, where), used


def _weights_spec(weights: str | Path | WeightsSpec) -> WeightsSpec:
    return weights if isinstance(weights, WeightsSpec) else WeightsSpec(path=Path(weights))


def _is_safetensors(path: Path) -> bool:
    """By its name, or by its first bytes (an 8-byte header length, then the JSON header), so
    that a safetensors file under another name is never handed to ``torch.load``."""
    if path.suffix.lower() == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    return len(head) == 9 and head[8:] == b"{" and 0 < int.from_bytes(head[:8], "little") < size


def _read_safetensors(path: Path, where: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        try:
            with path.open("rb") as f:
                torch_file = f.read(2) in (b"PK", b"\x80\x02")  # torch.save: a zip, or a pickle
        except OSError:
            torch_file = False
        raise CheckpointError(
            f"{where}: {path} is not a readable safetensors file ({exc})",
            hint="weights load only from .safetensors files or PyTorch state dicts "
            "(.pt/.pth/.bin); "
            + (
                "this one was written by torch.save: rename it to .pt (`crossdistill "
                "convert-weights` then makes a safetensors file of it)"
                if torch_file
                else "this one is damaged or in another format"
            ),
        ) from None


def _torch_load(path: Path, where: str) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"{where}: {path} holds a pickled object ({found[1]}), not a state dict of "
                "tensors; crossdistill never unpickles objects (they can run code)",
                hint=f"save the state dict alone, {_SAVE_HINT}",
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
        error: Exception = exc
        reason = detail[1] if detail else "not a pickle torch can read safely"
    except Exception as exc:  # torch raises many kinds of error on bytes not in its format
        error, reason = exc, (str(exc).strip().splitlines() or ["no detail"])[0][:200]
    raise CheckpointError(
        f"{where}: {path} is not a readable PyTorch state dict ({type(error).__name__}: {reason})",
        hint="weights load from .safetensors files or from PyTorch state dicts saved with "
        "torch.save(model.state_dict(), path); check that the file is complete",
    ) from None


def _find_state_dict(
    obj: Any, path: Path, where: str, key: str | None
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict in what ``torch.load`` read: ``obj`` itself, ``obj[key]``, or ``obj``
    under the first of :data:`STATE_DICT_KEYS` that holds one."""
    used: str | None = None
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            keys = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else []
            raise CheckpointError(
                f"{where}: {path} has no key {key!r}",
                hint=f"its top-level keys: {keys}" if keys else "leave out the key",
            )
        used = key
    elif isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = [k for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)]
        tensors_only = [k for k in nested if _all_tensors(obj[k])]
        if nested:
            used = (tensors_only or nested)[0]
        elif any(isinstance(v, Mapping) for v in obj.values()):
            raise CheckpointError(
                f"{where}: {path} holds a dict with no state dict under "
                f"{' / '.join(STATE_DICT_KEYS)}: its keys are {sorted(map(str, obj))[:10]}",
                hint="convert it naming the key that holds the tensors: "
                f"`crossdistill convert-weights {path} OUT.safetensors --key KEY`",
            )
    found = obj if used is None else obj[used]
    under = f" under {used!r}" if used is not None else ""
    if not isinstance(found, Mapping):
        raise CheckpointError(
            f"{where}: {path}{under} holds a {type(found).__name__}, not a state dict",
            hint=f"save the state dict, {_SAVE_HINT}",
        )
    for name, value in found.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{where}: {path}{under}: key {name!r} holds a {type(value).__name__}, not a "
                "tensor",
                hint="a state dict maps parameter names to tensors only; save the state dict "
                f"alone ({_SAVE_HINT}), or name the key that holds it: `crossdistill "
                f"convert-weights {path} OUT.safetensors --key KEY`",
            )
    if not found:
        raise CheckpointError(f"{where}: {path}{under} holds no tensors", hint=_SAVE_HINT)
    if used is not None:
        log.info("%s: the state dict under %r in %s", where, used, path)
    return dict(found), used


def _all_tensors(value: Mapping[Any, Any]) -> bool:
    return bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _map_keys(
    state: dict[str, torch.Tensor], spec: WeightsSpec, where: str
) -> dict[str, torch.Tensor]:
    """``state`` with ``spec.strip_prefix`` removed and ``spec.rename`` applied, both on module
    path boundaries (``"fc"`` renames ``fc.weight``, never ``fc2.weight``; a trailing dot is
    optional); an option that matches no key is an error, since it is surely misspelled."""
    keys = {k: k for k in state}
    if spec.strip_prefix:
        prefix = spec.strip_prefix.rstrip(".") + "."
        if not any(k.startswith(prefix) for k in keys):
            raise CheckpointError(
                f"{where}: no key in {spec.path} starts with {prefix!r} (strip_prefix)",
                hint=f"its keys begin like {sorted(keys)[:3]}; fix or remove strip_prefix",
            )
        keys = {k: k.removeprefix(prefix) for k in keys}
    if spec.rename:
        rules = sorted(
            ((old.rstrip("."), new.rstrip(".")) for old, new in spec.rename.items()),
            key=lambda rule: -len(rule[0]),  # the longest prefix wins
        )
        matched: set[str] = set()
        for file_key, key in keys.items():
            for old, new in rules:
                if old and key != old and not key.startswith(old + "."):
                    continue
                rest = key[len(old) :] if old else "." + key
                if not new and not rest:
                    raise CheckpointError(
                        f"{where}: rename {old!r} -> {new!r} leaves key {key!r} of {spec.path} "
                        "with no name",
                        hint="rename a module path, not a whole key, to an empty prefix",
                    )
                keys[file_key] = (new + rest) if new else rest[1:]
                matched.add(old)
                break
        unmatched = [old for old, _ in rules if old not in matched]
        if unmatched:
            raise CheckpointError(
                f"{where}: rename {unmatched[0]!r} matches no key in {spec.path}"
                + (" (after strip_prefix)" if spec.strip_prefix else ""),
                hint=f"its keys begin like {sorted(keys.values())[:3]}; rename maps a key "
                "prefix in the file to one in the model",
            )
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for file_key, key in keys.items():
        if key in out:
            raise CheckpointError(
                f"{where}: keys {source[key]!r} and {file_key!r} of {spec.path} both become "
                f"{key!r} after strip_prefix/rename",
                hint="make the prefixes specific enough to keep the keys apart",
            )
        out[key], source[key] = state[file_key], file_key
    return out


def _check_fit(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, strict: bool, where: str
) -> None:
    """Missing or unexpected keys (when ``strict``) and any shape mismatch, in one error."""
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
            f"{where}: weights in {path} do not fit {type(model).__name__}: {', '.join(parts)}",
            hint=_mapping_hint(missing, unexpected)
            or "check that the recipe's `model:` and `params:` are those the weights were "
            "trained with",
        )
    if missing:
        log.warning(
            "%s: %d tensors of %s are not in %s and keep their initial values (e.g. %s)",
            where,
            len(missing),
            type(model).__name__,
            path,
            missing[:3],
        )


def _check_values(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, where: str
) -> None:
    """Refuse what ``load_state_dict`` would take without a word: integer (e.g. int8 or
    quantized) tensors cast into float tensors of the model, which turns quantized values into
    wrong weights, and NaN/Inf in parameters (the losses would be NaN from the first step).
    Buffers may hold -inf on purpose (attention masks): only parameters are checked for it."""
    own = model.state_dict()
    cast = [
        f"{k} ({str(state[k].dtype).removeprefix('torch.')} into "
        f"{str(own[k].dtype).removeprefix('torch.')})"
        for k in own
        if k in state and own[k].is_floating_point() and not state[k].is_floating_point()
    ]
    if cast:
        raise CheckpointError(
            f"{where}: {path} holds integer tensors where {type(model).__name__} has float ones: "
            f"{'; '.join(cast[:3])}" + (f" and {len(cast) - 3} more" if len(cast) > 3 else ""),
            hint="a quantized checkpoint needs its own loader (with its scales); load the float "
            "weights it was made from, or dequantize them to float tensors first",
        )
    parameters = {name for name, _ in model.named_parameters()}
    bad = [
        k
        for k in sorted(parameters & set(state))
        if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())
    ]
    if bad:
        raise CheckpointError(
            f"{where}: {path} holds NaN or Inf in {len(bad)} parameters (e.g. {bad[:3]})",
            hint="the file is damaged, or was saved after training diverged: load an earlier "
            "or a good copy",
        )


def _mapping_hint(missing: list[str], unexpected: list[str]) -> str | None:
    """A hint when the file's keys look like the model's under another prefix."""
    if not (missing and unexpected):
        return None
    for key in unexpected[:50]:
        for name in missing:
            if key.endswith("." + name):
                prefix = key[: -len(name)]
                return (
                    f"the file's keys carry a prefix the model's lack ({key!r} vs {name!r}): "
                    f'give the weights as {{path: ..., strip_prefix: "{prefix}"}}'
                )
            if name.endswith("." + key):
                prefix = name[: -len(key) - 1]
                return (
                    f"the model's keys carry a prefix the file's lack ({name!r} vs {key!r}): "
                    f'give the weights as {{path: ..., rename: {{"": "{prefix}"}}}}'
                )
    return (
        f"the file's keys (e.g. {unexpected[:2]}) differ from the model's (e.g. {missing[:2]}): "
        "if only their prefixes differ, map them with {path: ..., strip_prefix: P} or "
        "{path: ..., rename: {FILE_PREFIX: MODEL_PREFIX}}; else check the recipe's `model:` "
        "and `params:`"
    )
