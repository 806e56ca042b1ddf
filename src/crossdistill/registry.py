"""Registries: one rule for every plug-in (losses, models, adapters, data sources, pipeline steps,
augmentations, export formats, evaluation suites).

A plug-in is a class or a function. It is named in a recipe either by its registered name or by
its import path, ``package.module:Attribute``, and built by :meth:`Registry.build`: the recipe's
``params`` are validated against the plug-in's signature (its ``__init__`` for a class), and
every error names the recipe path (``losses[1].params.temperature``) and what it accepts.

It registers itself in the file that defines it::

    @LOSSES.register("my_loss")
    class MyLoss(Loss): ...

and that file is imported by one of: the package of the registry (crossdistill's core
built-ins), an installed package's ``crossdistill.plugins`` entry point (crossdistill's own
domains, and third-party packages), a recipe's ``imports:`` list, or ``--import MODULE`` on the
command line. A name not found loads the entry points once and looks again.

Trust: a recipe is code the user chose to run, so it may name any import path. A run or export
folder is data: what it names is built under :func:`untrusted`, where an import path is refused
unless its package is on an allow-list (``--allow-import PKG``, ``--import MODULE``, the
``CROSSDISTILL_ALLOW_IMPORT`` environment variable, or ``allow=`` in Python). Registered names
stay buildable: they are code the user installed or imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.metadata
import inspect
import os
import pkgutil
import re
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic

from crossdistill._util.validation import format_validation_error, short_repr
from crossdistill.errors import (
    ConfigError,
    CrossDistillError,
    UnknownNameError,
    UntrustedCodeError,
    did_you_mean,
)

T = TypeVar("T")
PLUGIN_GROUP = "crossdistill.plugins"


class Registry(Generic[T]):
    """Names → plug-ins of one kind (``kind`` names it in messages).

    ``base``: a class every plug-in of this kind subclasses (checked for import paths);
    ``returns``: the type(s) :meth:`build` must produce (checked on every build).
    """

    def __init__(
        self,
        kind: str,
        *,
        base: type | None = None,
        returns: type | tuple[type, ...] | None = None,
    ) -> None:
        self.kind = kind
        self.base = base
        self.returns = returns
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` on a class or a factory function. The name
        is kept on the object as ``plugin_name``."""

        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            with contextlib.suppress(AttributeError, TypeError):  # a builtin keeps no attributes
                obj.plugin_name = name  # type: ignore[attr-defined]
            return obj

        return add

    def get(self, name: str) -> T:
        """The plug-in registered as ``name``; a misspelling lists the close and known names."""
        if name not in self._items:
            load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}",
                hint=f"{did_you_mean(name, self._items)}; a plug-in of your own is named by its "
                "import path, package.module:Attribute",
            ) from None

    def resolve(self, ref: str | T, where: str = "") -> T:
        """A registered name, an import path ``package.module:Attribute``, or the plug-in itself
        (given from Python)."""
        if not isinstance(ref, str):
            return ref
        if ":" not in ref:
            return self.get(ref)
        check_import(ref, f"the {self.kind} {ref!r}", where or self.kind)
        obj = import_object(ref, f"{where or self.kind}: {self.kind} {ref!r}")
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise ConfigError(
                f"{where or self.kind}: {ref!r} is not a {self.kind}",
                hint=f"a {self.kind} is a subclass of {self.base.__module__}."
                f"{self.base.__qualname__}",
            )
        if not callable(obj):
            raise ConfigError(f"{where or self.kind}: {self.kind} {ref!r} is not callable")
        return obj  # type: ignore[return-value]

    def build(
        self,
        ref: str | T,
        params: Mapping[str, Any] | None = None,
        where: str = "",
        **fixed: Any,
    ) -> Any:
        """Call the plug-in ``ref`` with ``params`` validated against its signature.

        ``fixed`` are arguments crossdistill supplies rather than the recipe (an adapter's
        shapes, a data source's split). Errors name ``<where>.params.<field>``.
        """
        where = where or self.kind
        factory = self.resolve(ref, where)
        label = ref if isinstance(ref, str) else getattr(factory, "__name__", repr(factory))
        kwargs = validate_params(factory, params or {}, where, f"{self.kind} {label!r}", fixed)
        try:
            built = factory(**kwargs, **fixed)  # type: ignore[operator]
        except CrossDistillError:
            raise
        except Exception as exc:  # a bad value the plug-in itself refused, or its own bug
            raise ConfigError(
                f"{where}: cannot build {self.kind} {label!r} with params "
                f"{short_repr(dict(params or {}))}: "
                f"{type(exc).__name__}: {exc}",
                hint=f"check {where}.params (--debug shows the traceback)",
            ) from exc
        if self.returns is not None and not isinstance(built, self.returns):
            raise ConfigError(
                f"{where}: {self.kind} {label!r} returned a {type(built).__name__}, not a "
                f"{_type_names(self.returns)}"
            )
        if isinstance(ref, str):  # what built it: a run records it, to build it again
            with contextlib.suppress(AttributeError, TypeError):
                built.plugin_spec = {"name": ref, "params": dict(params or {})}
        return built

    def accepts(self, ref: str, param: str) -> bool:
        """Whether the plug-in ``ref`` takes a keyword parameter ``param``."""
        return param in _signature(self.resolve(ref)).parameters

    def describe(self, ref: str | T, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """What a user can know of the plug-in ``ref`` without reading its code: ``name``,
        ``path`` (its import path), ``summary`` (its docstring's first paragraph, on one line),
        ``paper`` (the citation its docstring gives, ``(Author et al., Venue 2020,
        arXiv:…)``, or None), ``params`` (``{name, type, default}`` each, from the signature
        :meth:`build` validates against; ``default`` is ``"required"`` where there is none).

        ``exclude``: the parameters crossdistill supplies itself, the ``fixed`` of :meth:`build`
        (an adapter's ``student_shape`` and ``teacher_shape``, a data source's ``split``). The
        registry cannot tell them from the others: the code that calls :meth:`build` knows them.
        """
        obj = self.resolve(ref)
        model = params_model(obj)
        skip = set(exclude)
        params = [
            {
                "name": name,
                "type": _type_name(field.annotation),
                "default": "required" if field.is_required() else field.default,
            }
            for name, field in model.model_fields.items()
            if name not in skip
        ]
        doc = inspect.cleandoc(obj.__doc__ or "")  # its own, not inherited
        paragraph = doc.split("\n\n")[0]
        registered = isinstance(ref, str) and ":" not in ref
        target = obj if hasattr(obj, "__qualname__") else type(obj)  # a callable instance
        return {
            "name": ref if registered else plugin_name(obj),
            "path": f"{target.__module__}:{target.__qualname__}",
            "summary": " ".join(paragraph.split()),
            "paper": citation(doc),
            "params": params,
        }

    def names(self) -> list[str]:
        """Every registered name, plug-in packages included."""
        load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# a parenthesis that cites: an arXiv id, a DOI, or an author list and a year
_CITATION = re.compile(
    r"\(([^()]*?(?:arXiv:\s?\d{4}\.\d{4,5}|doi:\S+|\b[A-Z][^()]*\b(?:19|20)\d\d\b)[^()]*)\)"
)


def citation(doc: str) -> str | None:
    """The first paper a docstring cites in parentheses (``Hinton, Vinyals & Dean 2015,
    arXiv:1503.02531``), on one line; None when it cites none."""
    found = _CITATION.search(doc)
    return " ".join(found.group(1).split()) if found else None


def plugin_name(obj: Any) -> str:
    """The name a recipe gives ``obj`` (a plug-in, or an instance of a plug-in class): its
    registered name, or its import path ``package.module:Qualname``. A subclass of a registered
    plug-in is not that plug-in: only a name registered on the class itself counts."""
    target = obj if isinstance(obj, type) or inspect.isfunction(obj) else type(obj)
    own = vars(target).get("plugin_name") if isinstance(target, type) else None
    if not isinstance(target, type):
        own = getattr(target, "plugin_name", None)
    return own or f"{target.__module__}:{target.__qualname__}"


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(f"{t.__module__.partition('.')[0]} {t.__qualname__}" for t in types)


def _type_name(annotation: Any) -> str:
    """A type as a recipe writer reads it: ``int | Sequence[int]``, not
    ``int | collections.abc.Sequence[int]``."""
    if annotation is None or annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__qualname__
    # module prefixes dropped outside quoted literals (a Literal's values keep their dots)
    parts = re.split(r"('[^']*'|\"[^\"]*\")", repr(annotation))
    return "".join(
        part if i % 2 else re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", part)
        for i, part in enumerate(parts)
    )


# ------------------------------------------------------------------------ finding plug-ins


def import_object(ref: str, what: str) -> Any:
    """The object an import path ``package.module:Attribute`` (attributes may be dotted) names;
    refused under :func:`untrusted` unless its package is allowed."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what}: an import path is package.module:Attribute, got {ref!r}")
    check_import(ref, repr(ref), what)
    module = import_module(module_name, what)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnknownNameError(f"{what}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def import_module(name: str, what: str) -> Any:
    """``importlib.import_module(name)`` with an error that says who wanted it and how to fix it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(
            f"{what}: cannot import module {name!r}: {exc}",
            hint="the module must be importable in this environment (pip install its package, "
            "or add its folder to PYTHONPATH)",
        ) from None
    except Exception as exc:  # a SyntaxError or an error at the module's import time
        raise ConfigError(
            f"{what}: cannot import module {name!r}: {type(exc).__name__}: {exc}",
            hint=f"fix the module (run `python -c 'import {name}'` to see the traceback)",
        ) from exc


def import_modules(names: Iterable[str], where: str = "imports") -> None:
    """Import the plug-in modules a recipe's ``imports:`` or ``--import`` lists."""
    for i, name in enumerate(names):
        import_module(name, f"{where}[{i}]")


@functools.cache
def load_plugins() -> None:
    """Import every ``crossdistill.plugins`` entry point once (crossdistill's domains, and any
    installed plug-in package)."""
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        dist = entry.dist.name if entry.dist else "an installed package"
        import_module(entry.value.partition(":")[0], f"plug-in {entry.name!r} of {dist}")


def import_submodules(package: str, path: Iterable[str]) -> None:
    """Import every module of ``package`` (call from its ``__init__`` with ``__path__``), so that
    adding a plug-in is adding a file. Modules whose name starts with ``_`` are helpers."""
    for info in pkgutil.iter_modules(list(path)):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


# ------------------------------------------------------------------------ trust

ALLOW_IMPORT_ENV = "CROSSDISTILL_ALLOW_IMPORT"
_PACKAGE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclass(frozen=True)
class _Untrusted:
    source: str  # the file that names what is being built
    allow: tuple[str, ...]


_UNTRUSTED: contextvars.ContextVar[_Untrusted | None] = contextvars.ContextVar(
    "crossdistill_untrusted", default=None
)
_ALLOWED: list[str] = []  # the standing allow-list of this process (allow_imports)


def _packages(names: Iterable[str], where: str) -> tuple[str, ...]:
    """``names`` checked as dotted package names: a typo must not allow more than meant."""
    out = []
    for name in [names] if isinstance(names, str) else names:  # one name, not its letters
        name = name.strip()
        if not _PACKAGE.fullmatch(name):
            raise ConfigError(
                f"{where}: {name!r} is not a package name",
                hint="give a dotted module name, e.g. my_pkg or my_pkg.nets",
            )
        out.append(name)
    return tuple(out)


def allow_imports(packages: Iterable[str], where: str = "--allow-import") -> None:
    """Allow run and export folders to name code of ``packages`` (and their subpackages) by
    import path, for the rest of this process: the CLI's ``--allow-import`` and ``--import``."""
    _ALLOWED.extend(_packages(packages, where))


def allowed_imports() -> tuple[str, ...]:
    """The standing allow-list: :func:`allow_imports` and ``CROSSDISTILL_ALLOW_IMPORT``
    (comma-separated), read now so that a changed environment counts."""
    env = [p for p in os.environ.get(ALLOW_IMPORT_ENV, "").split(",") if p.strip()]
    return (*_ALLOWED, *_packages(env, ALLOW_IMPORT_ENV))


@contextlib.contextmanager
def untrusted(source: str | os.PathLike[str], allow: Iterable[str] = ()) -> Iterator[None]:
    """Build what the file ``source`` (a run or export folder's file: data, not code) names:
    inside, an import path is refused unless its module is in a package of ``allow`` or of the
    standing list (:func:`allowed_imports`); ``my_pkg`` allows ``my_pkg`` and ``my_pkg.sub``,
    not ``my_pkgx``. Registered names are not affected. A nested context keeps what the outer
    one allows (it reads on the outer one's behalf)."""
    outer = _UNTRUSTED.get()
    allowed = _packages(allow, "allow_import") + (outer.allow if outer else ())
    token = _UNTRUSTED.set(_Untrusted(os.fspath(source), allowed))
    try:
        yield
    finally:
        _UNTRUSTED.reset(token)


def check_import(ref: str, what: str, where: str = "") -> None:
    """Refuse the import path ``ref`` (``package.module:Attribute``, or a dotted module or class
    name) inside :func:`untrusted` unless its module is allowed; ``what`` names it in the
    message (``the model 'pkg:make'``), ``where`` is its place in the file."""
    context = _UNTRUSTED.get()
    if context is None:  # a recipe or Python code: the user's own
        return
    module = ref.partition(":")[0] if ":" in ref else ref.rpartition(".")[0] or ref
    allowed = (*context.allow, *allowed_imports())
    if any(module == p or module.startswith(p + ".") for p in allowed):
        return
    raise UntrustedCodeError(
        f"{context.source} names {what} by import path"
        + (f" (at {where})" if where and not where.startswith(context.source) else "")
        + "; crossdistill never imports code that a run or export folder names",
        hint=f"if you trust {module!r}, pass `crossdistill --allow-import {module} ...` "
        f"(Python: allow_import=[{module!r}]; or set {ALLOW_IMPORT_ENV}), or "
        "`--import MODULE` a module that registers it by name",
    )


# ------------------------------------------------------------------------ parameters


def _signature(obj: Any) -> inspect.Signature:
    try:
        return inspect.signature(obj.__init__ if isinstance(obj, type) else obj)
    except (TypeError, ValueError):  # a builtin or C callable without a readable signature
        return inspect.Signature()


@functools.cache
def params_model(obj: Any) -> type[pydantic.BaseModel]:
    """A pydantic model of the keyword parameters of ``obj`` (a class's ``__init__``, or a
    function); extra keys are allowed only when it takes ``**kwargs``."""
    target = obj.__init__ if isinstance(obj, type) else obj
    try:  # resolved in the defining module, where names such as `Shape` mean something
        hints = typing.get_type_hints(target)
    except Exception:  # annotations that do not resolve: every parameter is Any
        hints = {}
    fields: dict[str, Any] = {}
    extra = "forbid"
    for name, p in _signature(obj).parameters.items():
        if name == "self" or p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.VAR_KEYWORD:
            extra = "allow"
            continue
        default = p.default if p.default is not inspect.Parameter.empty else ...
        fields[name] = (hints.get(name, Any), default)
    return pydantic.create_model(
        f"{getattr(obj, '__name__', 'Plugin')}Params",
        __config__=pydantic.ConfigDict(extra=extra, arbitrary_types_allowed=True),
        **fields,
    )


def validate_params(
    obj: Any, params: Mapping[str, Any], where: str, label: str, fixed: Mapping[str, Any]
) -> dict[str, Any]:
    """``params`` validated against ``obj``'s signature: the keyword arguments to call it with
    (only those given, so its own defaults apply), ``fixed`` left for the caller to add."""
    model = params_model(obj)
    clash = sorted(set(params) & set(fixed))
    accepted = [f for f in model.model_fields if f not in fixed]
    if clash:
        raise ConfigError(
            f"{where}.params sets {clash}, which crossdistill supplies itself",
            hint=f"{label} accepts: {', '.join(accepted) or 'nothing'}",
        )
    # a path object where the signature says str: YAML never gives one, Python callers do
    values = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in params.items()}
    try:
        validated = model.model_validate({**fixed, **values})
    except pydantic.ValidationError as exc:
        raise ConfigError(
            f"bad parameters for {label}:\n"
            + format_validation_error(exc, prefix=f"{where}.params"),
            hint=f"{label} accepts: {', '.join(accepted) or 'nothing'}",
        ) from None
    given = {k: getattr(validated, k) for k in validated.model_fields_set if k not in fixed}
    return {**given, **(validated.model_extra or {})}
