"""The :class:`Adapter` base class, the registry, and the automatic choice of an adapter.

Shapes exclude the batch dimension and come in three kinds: a vector ``(D,)``, tokens ``(N, D)``
(``N = g²`` patch tokens, or ``1 + g²`` with a leading CLS token) and a map ``(C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from crossdistill.errors import ShapeError
from crossdistill.registry import Registry

Shape = tuple[int, ...]


class Adapter(nn.Module):
    """Maps ``(B, *student_shape)`` to ``(B, *teacher_shape)``.

    Subclasses take ``(student_shape, teacher_shape, **hyper-parameters)`` and say in
    :meth:`bridges` which pairs of shapes they can map; ``auto`` tries them in ``priority``
    order (lowest first), so the simplest adapter that fits is chosen.
    """

    priority: ClassVar[int] = 100

    @classmethod
    def bridges(cls, student: Shape, teacher: Shape) -> bool:
        raise NotImplementedError


ADAPTERS: Registry[type[Adapter]] = Registry("adapter", base=Adapter, returns=Adapter)


def describe(shape: Shape) -> str:
    kind = {1: "vector", 2: "tokens", 3: "map"}.get(len(shape), "tensor")
    return f"{kind} {tuple(shape)}"


def auto_adapter(student: Shape, teacher: Shape) -> str:
    """The name of the first adapter (by priority) that maps ``student`` to ``teacher``."""
    for name in sorted(ADAPTERS, key=lambda n: ADAPTERS.get(n).priority):
        if ADAPTERS.get(name).bridges(tuple(student), tuple(teacher)):
            return name
    raise ShapeError(
        f"no adapter maps a student {describe(student)} to a teacher {describe(teacher)}",
        hint="tap other modules (a map or tokens can be pooled to a vector, not the reverse), "
        f"or give the loss an adapter of your own; registered adapters: {ADAPTERS.names()}",
    )


def build_adapter(
    spec: str | Mapping[str, Any],
    student: Shape,
    teacher: Shape,
    where: str = "adapter",
) -> Adapter:
    """An adapter from a recipe's ``adapter:`` value: ``"auto"``, a name or import path, or
    ``{name: ..., params: {...}}``, for tensors of the given shapes (batch excluded)."""
    name, params = (spec, {}) if isinstance(spec, str) else (spec["name"], spec.get("params", {}))
    if name == "auto":
        name = auto_adapter(student, teacher)
    elif not ADAPTERS.resolve(name, where).bridges(tuple(student), tuple(teacher)):
        raise ShapeError(
            f"{where}: adapter {name!r} cannot map a student {describe(student)} to a teacher "
            f"{describe(teacher)}",
            hint="use `adapter: auto` to pick one that can",
        )
    return ADAPTERS.build(
        name, params, where, student_shape=tuple(student), teacher_shape=tuple(teacher)
    )
