"""Taps: named forward hooks on module paths — features are captured, models are never rewritten.

A :class:`Tap` names a module by its dotted path (``"layer3.1"``,
``"encoder.layer.5.attention"``) and captures that module's output (or input) on every forward.
A ``select`` picks one element of a tuple/list/dict output (an index, a key, or a dotted chain of
them: ``"0"``, ``"last_hidden_state"``, ``"1.attn"``). A ``layout`` says how the captured tensor
is laid out, where its rank alone does not (a 1-D map and tokens are both rank 3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.errors import ConfigError, ShapeError, TapError, did_you_mean

Layout = Literal["NCHW", "NCT", "NLD", "ND"]
# Each layout's rank with the batch excluded (as adapters see shapes), and what it is.
LAYOUTS: dict[str, tuple[int, str]] = {
    "NCHW": (3, "a 2-D map (B, C, H, W)"),
    "NCT": (2, "a 1-D map (B, C, T), channels x time"),
    "NLD": (2, "tokens (B, N, D), length x width"),
    "ND": (1, "a vector (B, D)"),
}


def default_layout(rank: int) -> Layout | None:
    """The layout a tensor of ``rank`` (batch excluded) has when none is declared. Rank 2 is
    read as tokens, as before layouts existed; a 1-D map must be declared ``NCT``."""
    layout: dict[int, Layout] = {1: "ND", 2: "NLD", 3: "NCHW"}
    return layout.get(rank)


@dataclass(frozen=True)
class Tap:
    """Capture ``path``'s output (or input) under ``name``.

    The captured tensor appears in the model's Knowledge as ``features/<name>``
    (``attention/<name>`` when ``kind="attention"``). ``pool`` average-pools it as it is
    captured, to a ``pool x pool`` grid for a ``(B, C, H, W)`` map, to ``pool`` time steps for a
    ``(B, C, T)`` map declared ``NCT``, or to ``pool`` tokens for ``(B, N, D)`` tokens: a smaller
    feature to match, and to keep in a knowledge store.

    ``layout`` declares how the tensor is laid out (batch first): ``NCHW`` a 2-D map, ``NCT`` a
    1-D map (channels x time: audio, sensors), ``NLD`` tokens, ``ND`` a vector. Unset, it is read
    from the rank (see :func:`default_layout`); declared, a tensor of another rank is refused.
    """

    name: str
    path: str
    on: Literal["output", "input"] = "output"
    select: str | int | None = None
    kind: Literal["features", "attention"] = "features"
    pool: int | None = None
    layout: Layout | None = None

    def __post_init__(self) -> None:
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ConfigError(
                f"tap {self.name!r} on {self.path!r}: unknown layout {self.layout!r}",
                hint="one of "
                + ", ".join(f"{name} ({what})" for name, (_, what) in LAYOUTS.items()),
            )
        if self.layout == "ND" and self.pool is not None:
            raise ConfigError(
                f"tap {self.name!r} on {self.path!r}: a vector (layout ND) cannot be pooled",
                hint="remove `pool:` from this tap",
            )

    def capture(self, value: Any, where: str) -> torch.Tensor:
        """The selected tensor, pooled, as a new tensor (never a view of the model's own)."""
        x = select_output(value, self.select, where)
        if self.layout is not None and x.dim() != LAYOUTS[self.layout][0] + 1:
            fits = [name for name, (rank, _) in LAYOUTS.items() if rank + 1 == x.dim()]
            raise ShapeError(
                f"tap {self.name!r} on module {self.path!r} declares layout {self.layout}, "
                f"{LAYOUTS[self.layout][1]}, but captured a tensor of shape {tuple(x.shape)}",
                hint=(f"its layout is {' or '.join(fits)}; " if fits else "")
                + "tap another module, or remove `layout:` to read the layout from the rank",
            )
        if self.pool is None:
            # A copy: a later in-place op (ReLU(inplace=True) after BatchNorm, `out += x`) would
            # otherwise change the captured value and break its autograd graph.
            return x.clone()
        if x.dim() == 4:
            return F.adaptive_avg_pool2d(x, self.pool)
        if self.layout == "NCT":
            return F.adaptive_avg_pool1d(x, self.pool)
        if x.dim() == 3:
            return F.adaptive_avg_pool1d(x.transpose(1, 2), self.pool).transpose(1, 2)
        raise TapError(
            f"tap {where}: pool needs a (B, C, H, W) map, a (B, C, T) map declared NCT or "
            f"(B, N, D) tokens, got shape "
            f"{tuple(x.shape)}",
            hint="remove `pool:` from this tap",
        )

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path``; a wrong path lists the closest existing ones."""
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    names = [n for n in modules if n]
    raise TapError(
        f"no module at path {path!r} in {type(model).__name__}",
        hint=did_you_mean(path, names)
        if len(names) <= 40
        else did_you_mean(path, [n for n in names if n.count(".") <= path.count(".")]),
    )


def select_output(value: Any, select: str | int | None, where: str) -> torch.Tensor:
    """Pick a tensor out of a module's output (tensor, tuple/list, dict, or ModelOutput)."""
    if select is not None:
        for part in str(select).split("."):
            try:
                if isinstance(value, torch.Tensor):
                    raise TypeError  # a tensor's string index would be a deprecated fancy index
                if isinstance(value, (tuple, list)):
                    value = value[int(part)]
                elif isinstance(value, dict) or hasattr(value, "__getitem__"):
                    value = value[part]
                else:
                    raise TypeError
            except (KeyError, IndexError, ValueError, TypeError):
                raise TapError(
                    f"tap {where}: cannot select {part!r} from a {type(value).__name__}",
                    hint=_describe(value),
                ) from None
    if value is None:
        raise TapError(
            f"tap {where} captured None",
            hint="attention modules under SDPA/flash attention (the Hugging Face default) "
            "compute no probabilities: use eager attention, e.g. "
            "crossdistill.models.hf.expose_attention(model)",
        )
    if not isinstance(value, torch.Tensor):
        raise TapError(
            f"tap {where} captured a {type(value).__name__}, not a tensor",
            hint=f"add `select:` to pick one element; {_describe(value)}",
        )
    return value


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"it is a {type(value).__name__} of {len(value)} elements (select by index)"
    if isinstance(value, dict):
        return f"its keys are {list(value)}"
    return f"it is a {type(value).__name__}"


class TapRecorder:
    """Installs taps on a model and collects what they capture during one forward.

    Hooks stay installed until :meth:`remove`; :meth:`pop` returns and clears the captures, so a
    recorder can be reused forward after forward without holding on to old graphs.
    """

    def __init__(self, model: nn.Module, taps: Iterable[Tap]) -> None:
        self.taps = list(taps)
        seen: set[str] = set()
        for tap in self.taps:
            if tap.key in seen:
                raise TapError(
                    f"two taps are named {tap.name!r}", hint="give each tap its own name"
                )
            seen.add(tap.key)
        self._captured: dict[str, torch.Tensor] = {}
        self._handles = [self._install(model, tap) for tap in self.taps]

    def _install(self, model: nn.Module, tap: Tap) -> torch.utils.hooks.RemovableHandle:
        module = resolve_module(model, tap.path)
        where = f"{tap.name!r} on {tap.path!r}"

        if tap.on == "input":

            def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
                self._captured[tap.key] = tap.capture(
                    args if tap.select is not None else args[0], where
                )

            return module.register_forward_pre_hook(pre_hook)

        def hook(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            self._captured[tap.key] = tap.capture(output, where)

        return module.register_forward_hook(hook)

    def pop(self) -> dict[str, torch.Tensor]:
        """The captures of the last forward, and forget them."""
        captured, self._captured = self._captured, {}
        return captured

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
