"""The :class:`Adapter` base class, the registry, and the automatic choice of an adapter.

Shapes exclude the batch dimension. Each tensor has a layout (``crossdistill.core.taps.Layout``):
a vector ``ND`` ``(D,)``, tokens ``NLD`` ``(N, D)`` (``N = g²`` patch tokens, ``1 + g²`` with a
leading CLS token, or any sequence), a 1-D map ``NCT`` ``(C, T)`` and a 2-D map ``NCHW``
``(C, H, W)``. A tap may declare its layout; otherwise it is read from the rank, rank 2 as tokens
(see :func:`auto_adapter` for where ``auto`` refuses to rely on that).
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from torch import nn

from crossdistill.core.taps import LAYOUTS, Layout, default_layout
from crossdistill.errors import ConfigError, ShapeError
from crossdistill.registry import Registry

Shape = tuple[int, ...]
Layouts = tuple[Layout | None, Layout | None]

_KINDS = {"ND": "vector", "NLD": "tokens", "NCT": "1-D map", "NCHW": "map"}
# A CLS token before a square grid of at least 4 x 4 patches (17, 50, 65, 197, ... tokens): the
# signature of ViT tokens. Smaller counts of that form (5, 10) are common sensor channel counts.
_MIN_CLS_GRID = 4


class Adapter(nn.Module):
    """Maps ``(B, *student_shape)`` to ``(B, *teacher_shape)``.

    Subclasses take ``(student_shape, teacher_shape, **hyper-parameters)`` and say in
    :meth:`connects` which pairs of shapes and layouts they can map; ``auto`` tries them in
    ``priority`` order (lowest first), so the simplest adapter that fits is chosen. A constructor
    that also takes ``student_layout`` / ``teacher_layout`` is given the layouts it was chosen
    for; :func:`build_adapter` keeps them on the adapter as :attr:`layouts` either way.
    """

    priority: ClassVar[int] = 100
    layouts: Layouts = (None, None)

    @classmethod
    def bridges(
        cls,
        student: Shape,
        teacher: Shape,
        *,
        student_layout: Layout | None = None,
        teacher_layout: Layout | None = None,
    ) -> bool:
        """Whether this adapter maps ``student`` to ``teacher``: :meth:`connects` with both
        layouts resolved (a layout not given is the rank's default, :func:`layouts_of`). An
        adapter that overrides ``bridges`` without layouts (written before they existed) is
        offered only tensors of their rank's default layout."""
        s, t = layouts_of(student, teacher, student_layout, teacher_layout)
        return cls.connects(student, teacher, s, t)

    @classmethod
    def connects(cls, student: Shape, teacher: Shape, s: Layout, t: Layout) -> bool:
        """Whether this adapter maps ``student`` (layout ``s``) to ``teacher`` (layout ``t``)."""
        raise NotImplementedError


ADAPTERS: Registry[type[Adapter]] = Registry("adapter", base=Adapter, returns=Adapter)


def layouts_of(
    student: Shape,
    teacher: Shape,
    student_layout: Layout | None = None,
    teacher_layout: Layout | None = None,
) -> Layouts:
    """Both layouts: those given, else the ranks' defaults (rank 2: tokens)."""
    return (
        student_layout or default_layout(len(student)),
        teacher_layout or default_layout(len(teacher)),
    )


def describe(shape: Shape, layout: Layout | None = None) -> str:
    """``"map (16, 7, 7)"``; rank 2 names its layout too, which the rank does not tell."""
    layout = layout or default_layout(len(shape))
    tag = f" [{layout}]" if len(shape) == 2 and layout else ""
    return f"{_KINDS.get(layout or '', 'tensor')} {tuple(shape)}{tag}"


def _takes(fn: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _fits(adapter: type[Adapter], student: Shape, teacher: Shape, layouts: Layouts) -> bool:
    if _takes(adapter.bridges, "student_layout"):
        return bool(
            adapter.bridges(student, teacher, student_layout=layouts[0], teacher_layout=layouts[1])
        )
    # an adapter that knows no layouts reads rank 2 as tokens: never show it a 1-D map
    return layouts == layouts_of(student, teacher) and bool(adapter.bridges(student, teacher))


def _by_priority() -> list[str]:
    return sorted(ADAPTERS, key=lambda n: ADAPTERS.get(n).priority)


def _check_layout(shape: Shape, layout: Layout | None, side: str, where: str) -> None:
    if layout is None:
        return
    if layout not in LAYOUTS:
        raise ConfigError(
            f"{where}: unknown {side} layout {layout!r}",
            hint=f"one of {', '.join(LAYOUTS)}, or none to read it from the rank",
        )
    rank, what = LAYOUTS[layout]
    if len(shape) != rank:
        raise ShapeError(
            f"{where}: the {side} is declared {layout}, {what}, but is "
            f"(B, {', '.join(map(str, shape))})",
            hint=f"declare the {side}'s layout to fit its shape, or leave it undeclared",
        )


def _cls_tokens(n: int) -> bool:
    side = math.isqrt(max(n - 1, 0))
    return side * side == n - 1 and side >= _MIN_CLS_GRID


def _undeclared(student: Shape, teacher: Shape, declared: Layouts) -> list[Shape]:
    """The rank-2 tensors whose layout is read from their rank (as tokens)."""
    pairs = zip((student, teacher), declared, strict=True)
    return [shape for shape, layout in pairs if layout is None and len(shape) == 2]


def _guess(student: Shape, teacher: Shape, declared: Layouts) -> str | None:
    """Why taking an undeclared rank-2 tensor for tokens would be a guess, or ``None``."""
    undeclared = _undeclared(student, teacher, declared)
    if not undeclared:
        return None
    if "NCT" in declared:
        return "beside a 1-D map (NCT), a rank-2 tensor may be a 1-D map as well as tokens"
    lengths_differ = len(student) == len(teacher) == 2 and student[0] != teacher[0]
    if lengths_differ and not all(_cls_tokens(shape[0]) for shape in undeclared):
        return (
            "rank-2 tensors of different lengths are taken for tokens (and their patch grids "
            f"resampled) only with a CLS token before a square grid (1 + g² tokens, g ≥ "
            f"{_MIN_CLS_GRID}); two 1-D maps of different channel counts have such shapes too"
        )
    return None


def auto_adapter(
    student: Shape,
    teacher: Shape,
    *,
    student_layout: Layout | None = None,
    teacher_layout: Layout | None = None,
) -> str:
    """The name of the first adapter (by priority) that maps ``student`` to ``teacher``.

    A layout not given (not declared on the tap) is read from the rank, rank 2 as tokens (NLD).
    Where a 1-D map (NCT) is as likely and would be mapped otherwise, ``auto`` refuses to guess
    and asks for ``layout:``: an undeclared rank-2 tensor beside one declared NCT, or two rank-2
    tensors of different lengths unless each undeclared one is ``1 + g²`` long with g ≥ 4 (ViT
    tokens with a CLS token). Beside a vector, a 2-D map or a rank-2 tensor of the same length,
    an undeclared rank-2 tensor stays tokens (pooled, laid on its grid, projected per token).
    """
    student, teacher = tuple(student), tuple(teacher)
    declared = (student_layout, teacher_layout)
    _check_layout(student, student_layout, "student", "adapter: auto")
    _check_layout(teacher, teacher_layout, "teacher", "adapter: auto")
    layouts = layouts_of(student, teacher, *declared)
    why = _guess(student, teacher, declared)
    if why is not None:
        sides = zip(("student", "teacher"), (student, teacher), layouts, declared, strict=True)
        told = [
            f"the {side} {shape} is {layout} ({'declared' if given else 'read from its rank'})"
            for side, shape, layout, given in sides
        ]
        raise ShapeError(
            f"adapter: auto will not guess the layout of a rank-2 tensor: {', '.join(told)}; "
            + why,
            hint="declare `layout:` on the tap: NCT for a 1-D map (channels x time), NLD for "
            "tokens (length x width); or name the adapter to use",
        )
    for name in _by_priority():
        if _fits(ADAPTERS.get(name), student, teacher, layouts):
            return name
    raise ShapeError(
        f"no adapter maps a student {describe(student, layouts[0])} to a teacher "
        f"{describe(teacher, layouts[1])}",
        hint="tap other modules (a map or tokens can be pooled to a vector, not the reverse), "
        f"or give the loss an adapter of your own; registered adapters: {ADAPTERS.names()}"
        + (
            "; a rank-2 tensor without `layout:` is read as tokens: declare `layout: NCT` on "
            "the tap of a 1-D map (channels x time)"
            if _undeclared(student, teacher, declared)
            else ""
        ),
    )


def _readings(shape: Shape, layout: Layout | None) -> tuple[Layout | None, ...]:
    """The layouts a named adapter may read a tensor as: the declared one, else the rank's
    default, and for rank 2 a 1-D map after tokens (naming the adapter says which it is)."""
    if layout is not None:
        return (layout,)
    return ("NLD", "NCT") if len(shape) == 2 else (default_layout(len(shape)),)


def build_adapter(
    spec: str | Mapping[str, Any],
    student: Shape,
    teacher: Shape,
    where: str = "adapter",
    *,
    student_layout: Layout | None = None,
    teacher_layout: Layout | None = None,
) -> Adapter:
    """An adapter from a recipe's ``adapter:`` value: ``"auto"``, a name or import path, or
    ``{name: ..., params: {...}}``, for tensors of the given shapes (batch excluded) and layouts
    (declared on the taps; ``None`` reads them from the rank). An adapter named on an undeclared
    rank-2 tensor reads it as tokens, or as a 1-D map where only that fits (``conv1x1_1d``)."""
    name, params = (spec, {}) if isinstance(spec, str) else (spec["name"], spec.get("params", {}))
    student, teacher = tuple(student), tuple(teacher)
    _check_layout(student, student_layout, "student", where)
    _check_layout(teacher, teacher_layout, "teacher", where)
    if name == "auto":
        name = auto_adapter(
            student, teacher, student_layout=student_layout, teacher_layout=teacher_layout
        )
        layouts = layouts_of(student, teacher, student_layout, teacher_layout)
    else:
        readings = list(
            itertools.product(
                _readings(student, student_layout), _readings(teacher, teacher_layout)
            )
        )
        named = ADAPTERS.resolve(name, where)
        fit = next((r for r in readings if _fits(named, student, teacher, r)), None)
        if fit is None:
            given = layouts_of(student, teacher, student_layout, teacher_layout)
            able = [
                n
                for n in _by_priority()
                if any(_fits(ADAPTERS.get(n), student, teacher, r) for r in readings)
            ]
            raise ShapeError(
                f"{where}: adapter {name!r} cannot map a student {describe(student, given[0])} "
                f"to a teacher {describe(teacher, given[1])}",
                hint=(f"{' or '.join(repr(n) for n in able)} can; " if able else "")
                + "`adapter: auto` picks the simplest adapter that can",
            )
        layouts = fit
    cls = ADAPTERS.resolve(name, where)
    fixed: dict[str, Any] = {"student_shape": student, "teacher_shape": teacher}
    for key, layout in zip(("student_layout", "teacher_layout"), layouts, strict=True):
        if _takes(cls, key):
            fixed[key] = layout
    built: Adapter = ADAPTERS.build(name, params, where, **fixed)
    built.layouts = layouts
    return built
