"""Readable pydantic validation errors: one line per problem, named by its recipe path."""

from __future__ import annotations

import itertools
import reprlib
from typing import Any, get_args, get_origin

import annotated_types
import pydantic
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from crossdistill.errors import close_matches


def format_validation_error(
    exc: pydantic.ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> str:
    """One line per problem: the YAML path, what is wrong, what was given."""
    lines = []
    for err in exc.errors():
        *head, last = err["loc"] or ("",)
        loc = [p for p in head if not (isinstance(p, str) and "[" in p)]  # drop union tags
        if not (err["type"] != "extra_forbidden" and isinstance(last, str) and "[" in last):
            loc.append(last)  # an unknown key is the user's, brackets and all
        path = dotted([*(prefix.split(".") if prefix else []), *loc])
        if err["type"] == "extra_forbidden":
            known = _fields_at(model, loc[:-1]) if model else []
            close = close_matches(str(loc[-1]), known)
            msg = "unknown key" + (f"; did you mean {' or '.join(close)}?" if close else "")
            if known:
                msg += f" (expected one of: {', '.join(known)})"
        elif err["type"] == "missing":
            msg = "required but missing"
        else:
            allowed = _bounds(_field_at(model, loc)) if model else ""
            allowed = f"; allowed: {allowed}" if allowed else ""
            msg = f"{err['msg']}{allowed} (got {short_repr(err.get('input'))})"
        lines.append(f"  {path or '(top level)'}: {msg}")
    return "\n".join(lines)


class _ShortRepr(reprlib.Repr):
    """reprlib's bounded repr, with dicts in their own order (reprlib sorts their keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 8
        self.maxstring = 180
        self.maxother = 120
        self.maxlong = 40
        self.fillvalue = "…"

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{" + self.fillvalue + "}"
        items = itertools.islice(x.items(), self.maxdict)
        pieces = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in items]
        return (
            "{" + ", ".join(pieces) + (", " + self.fillvalue if len(x) > self.maxdict else "") + "}"
        )


_REPR = _ShortRepr()


def short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to at most ``limit`` characters (``…`` marks the cut).

    Built with a bounded repr, so its cost is bounded too: a value that is huge, or that
    shares its parts many times over (YAML anchors, a "billion laughs"), is never expanded.
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dotted(loc: list[Any]) -> str:
    """``["losses", 1, "params", "t"]`` as ``losses[1].params.t``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_at(model: type[BaseModel] | None, loc: list[Any]) -> list[str]:
    """The field names of the sub-model found by walking ``loc`` through ``model``'s fields."""
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        model = _submodel(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _field_at(model: type[BaseModel] | None, loc: list[Any]) -> FieldInfo | None:
    """The field that ``loc`` ends at (list indices and mapping keys skipped), or None."""
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return None
        if str(part) not in model.model_fields and field is not None and _keyed(field):
            continue  # a key of a mapping field (``store.keys.logits``): its values are `model`
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _submodel(field.annotation)
    return field


def _keyed(field: FieldInfo) -> bool:
    """Whether ``field`` is a mapping (``dict[str, Model]``, optional or not)."""
    types = [field.annotation, *get_args(field.annotation)]
    return any(t is dict or get_origin(t) is dict for t in types)


def _bounds(field: FieldInfo | None) -> str:
    """A field's numeric range when it is bounded on both sides (pydantic's own message names
    one bound only): ``0..4294967295`` for integers, else ``>= 0 and < 1``; else empty."""
    if field is None:
        return ""
    found: dict[str, Any] = {}
    integral = field.annotation is int
    # the bounds sit on the field, or on an Annotated type inside it (``Size | None``)
    items = list(field.metadata)
    for arg in get_args(field.annotation):
        for meta in getattr(arg, "__metadata__", ()):
            items += meta.metadata if isinstance(meta, FieldInfo) else [meta]
            integral = integral or get_args(arg)[0] is int
        integral = integral or arg is int
    for item in items:
        for key in ("gt", "ge", "lt", "le"):
            if isinstance(item, getattr(annotated_types, key.capitalize())):
                found[key] = getattr(item, key)
    if not ({"gt", "ge"} & set(found) and {"lt", "le"} & set(found)):
        return ""
    if integral:
        low = found["ge"] if "ge" in found else found["gt"] + 1
        high = found["le"] if "le" in found else found["lt"] - 1
        return f"{low}..{high}"
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"{symbols[k]} {v}" for k, v in found.items())


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _submodel(arg)
            if found:
                return found
    return None
