"""A tiny registry: pluggable objects (losses, models, data sources, pipelines) are registered by
name in the file that defines them, never listed in an if/elif chain."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import pydantic

from crossdistill.errors import ConfigError, UnknownNameError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` on a class or factory."""

        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The object registered as ``name``; a misspelling lists the close and known names."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}", hint=did_you_mean(name, self._items)
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_submodules(package: str, path: Iterable[str]) -> None:
    """Import every module of ``package`` (call from its ``__init__`` with ``__path__``).

    Each module registers its objects when imported, so adding a loss or an adapter is adding a
    file: no list to edit elsewhere. Modules whose name starts with ``_`` are helpers, skipped.
    """
    for info in pkgutil.iter_modules(list(path)):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


@functools.cache
def params_model(cls: type) -> type[pydantic.BaseModel]:
    """A pydantic model of ``cls.__init__``'s keyword arguments (its hyper-parameters)."""
    fields: dict[str, Any] = {}
    # resolved in the defining module, where names such as `Shape` mean something
    hints = typing.get_type_hints(cls.__init__)
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = hints.get(name, Any)
        default = p.default if p.default is not inspect.Parameter.empty else ...
        fields[name] = (annotation, default)
    return pydantic.create_model(
        f"{cls.__name__}Params",
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


def build_validated(
    registry: Registry[Any],
    name: str,
    params: Mapping[str, Any] | None = None,
    where: str = "",
    **fixed: Any,
) -> Any:
    """Instantiate the class registered as ``name``, its ``params`` validated against the type
    hints of its ``__init__`` (errors name ``<where>.params.<field>``). ``fixed`` are arguments
    supplied by the caller rather than the recipe (e.g. an adapter's tensor shapes)."""
    cls = registry.get(name)
    model = params_model(cls)
    try:
        validated = model.model_validate({**fixed, **dict(params or {})})
    except pydantic.ValidationError as exc:
        from crossdistill._util.validation import format_validation_error

        accepted = [f for f in model.model_fields if f not in fixed]
        raise ConfigError(
            f"bad hyper-parameters for {registry.kind} {name!r}:\n"
            + format_validation_error(exc, prefix=f"{where or registry.kind}.params"),
            hint=f"{name} accepts: {', '.join(accepted) or 'nothing'}",
        ) from None
    return cls(**{**dict(validated), **fixed})
