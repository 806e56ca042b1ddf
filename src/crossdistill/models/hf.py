"""Attention probabilities of Hugging Face transformers (BERT-style encoders), as taps.

In transformers 5.x a BERT-style self-attention module (``encoder.layer.<i>.attention.self``)
returns ``(context, probabilities)`` on every forward — no ``output_attentions`` needed — but
only with the *eager* attention implementation: ``sdpa`` (the default) and flash attention
never form the probabilities and return ``(context, None)``. Two ways to capture them, both
plain :class:`~crossdistill.core.taps.Tap` s::

    Tap("a5", "encoder.layer.5.attention.self", select=1, kind="attention")   # module path
    Tap("a5", "", select="attentions.5", kind="attention")  # model output, output_attentions

The first needs only eager attention; the second also ``config.output_attentions = True`` (the
root module, path ``""``, is tapped and ``outputs.attentions[5]`` selected). Both give the
softmax *after* attention dropout: in a model in training mode with
``attention_probs_dropout_prob > 0`` the rows are no longer distributions, so
:func:`expose_attention` turns that dropout off by default. The values MiniLM relates are the
output of the ``value`` Linear, ``encoder.layer.<i>.attention.self.value`` (``(B, L, D)``,
before the split into heads).

:func:`expose_attention` prepares a model; :func:`attention_taps` builds the taps and refuses,
with a :class:`~crossdistill.errors.TapError` naming them, a model whose attention exposes no
probabilities. transformers is imported lazily (nothing here needs it at import time).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from crossdistill.core.taps import Tap, resolve_module
from crossdistill.errors import TapError

SELF_ATTENTION = "encoder.layer.{i}.attention.self"
EAGER_HINT = (
    "load the model with attn_implementation='eager' (from_pretrained(..., "
    "attn_implementation='eager') or BertConfig(..., attn_implementation='eager')), or call "
    "crossdistill.models.hf.expose_attention(model) before building the taps"
)


def transformers_models(model: nn.Module) -> list[nn.Module]:
    """``model`` and its submodules that are transformers models (have
    ``set_attn_implementation``), outermost first: a wrapper around a BertModel finds it."""
    return [m for m in model.modules() if hasattr(m, "set_attn_implementation")]


def attention_implementation(model: nn.Module) -> str | None:
    """The attention implementation (``"eager"``, ``"sdpa"``, ...) of the first transformers
    model in ``model`` (itself or a submodule), or ``None`` where there is none."""
    for found in transformers_models(model):
        impl = getattr(getattr(found, "config", None), "_attn_implementation", None)
        if isinstance(impl, str):
            return impl
    return None


def expose_attention(
    model: nn.Module, *, output_attentions: bool = False, attention_dropout: float | None = 0.0
) -> nn.Module:
    """Make ``model``'s attention probabilities capturable, in place; returns ``model``.

    Switches to eager attention (sdpa/flash compute no probabilities). ``output_attentions``
    also makes the model return ``outputs.attentions``. ``attention_dropout`` (default 0) sets
    the dropout applied to the probabilities in every self-attention module (one that has
    ``num_attention_heads`` and a ``dropout``): a student in training mode must not drop them,
    or they are no distributions; ``None`` leaves it as it is.
    """
    found = transformers_models(model)
    if not found:
        raise TapError(
            f"expose_attention expects a Hugging Face transformers model, got "
            f"{type(model).__name__}, which contains none",
            hint="pass the transformers model (e.g. a BertModel) or a module that holds one",
        )
    for hf_model in found:
        hf_model.set_attn_implementation("eager")
        if output_attentions:
            hf_model.config.output_attentions = True
    if attention_dropout is not None:
        for module in model.modules():
            dropout = getattr(module, "dropout", None)
            if hasattr(module, "num_attention_heads") and isinstance(dropout, nn.Dropout):
                dropout.p = float(attention_dropout)
    return model


def check_attention_exposed(model: nn.Module, taps: Iterable[Tap]) -> None:
    """A TapError naming the attention taps of ``taps`` if ``model`` is a transformers model
    whose attention implementation returns no probabilities, or whose taps read
    ``outputs.attentions`` while ``output_attentions`` is off. Other models pass unchecked."""
    wanted = [tap for tap in taps if tap.kind == "attention"]
    impl = attention_implementation(model)
    if not wanted or impl is None:
        return
    names = ", ".join(f"{tap.name!r} on {tap.path!r}" for tap in wanted)
    if impl != "eager":
        raise TapError(
            f"attention requested from a model that exposes none: taps {names} read attention "
            f"probabilities, but {type(model).__name__} uses {impl!r} attention, which never "
            "computes them",
            hint=EAGER_HINT,
        )
    from_outputs = [t for t in wanted if str(t.select or "").startswith("attentions")]
    configs = [getattr(m, "config", None) for m in transformers_models(model)]
    if from_outputs and not any(getattr(c, "output_attentions", False) for c in configs):
        raise TapError(
            f"taps {', '.join(repr(t.name) for t in from_outputs)} select outputs.attentions, "
            f"but {type(model).__name__} has output_attentions off",
            hint="call expose_attention(model, output_attentions=True), or tap the "
            "self-attention modules instead (source='module')",
        )


def attention_taps(
    model: nn.Module,
    layers: Iterable[int],
    *,
    name: str = "attn{i}",
    values: str | None = None,
    source: Literal["module", "outputs"] = "module",
    path: str = SELF_ATTENTION,
) -> list[Tap]:
    """Taps on the attention probabilities (``attention/<name>``, ``(B, heads, L, L)``) of
    ``layers`` of a BERT-style transformers model, and on their values
    (``features/<values>``, ``(B, L, D)``) when a ``values`` name template is given.

    ``name``/``values`` are templates filled with the layer index (``"attn{i}"``). ``source``
    picks the self-attention module's output (``path`` with ``{i}``, select 1) or the model's
    ``outputs.attentions[i]``. The model must expose attention (:func:`expose_attention`):
    otherwise a TapError names the taps, before any forward.
    """
    if source not in ("module", "outputs"):
        raise TapError(f"attention_taps: source must be 'module' or 'outputs', got {source!r}")
    layers = list(layers)
    taps: list[Tap] = []
    for i in layers:
        module_path = path.format(i=i)
        if source == "module":
            resolve_module(model, module_path)  # a wrong path fails now, with close matches
            taps.append(Tap(name.format(i=i), module_path, select=1, kind="attention"))
        else:
            taps.append(Tap(name.format(i=i), "", select=f"attentions.{i}", kind="attention"))
        if values is not None:
            resolve_module(model, f"{module_path}.value")
            taps.append(Tap(values.format(i=i), f"{module_path}.value"))
    if source == "outputs":
        found = transformers_models(model)
        config = getattr(found[0], "config", None) if found else None
        layer_count = getattr(config, "num_hidden_layers", None)
        bad = [i for i in layers if layer_count is not None and not 0 <= i < layer_count]
        if bad:
            raise TapError(
                f"attention_taps: layers {bad} do not exist; the model has {layer_count} layers"
            )
    check_attention_exposed(model, taps)
    return taps


def strip_specials(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states ``(B, L, D)`` of BERT-style inputs (``[CLS] text [SEP]``, padded) without
    their special tokens: ``(B, L', D)`` and a bool mask ``(B, L')``, where position ``i`` is the
    text's ``i``-th token and ``L'`` the longest text's token count."""
    mask = mask.bool().clone()
    rows = torch.arange(mask.shape[0], device=mask.device)
    last = (mask.sum(1) - 1).clamp(min=0)
    mask[rows, last] = False  # [SEP]
    mask[:, 0] = False  # [CLS]
    states, mask = states[:, 1:], mask[:, 1:]
    width = int(mask.sum(1).max()) if len(mask) else 0
    return states[:, :width], mask[:, :width]
