"""Readable pydantic validation errors: one line per problem, named by its recipe path."""

from __future__ import annotations

from typing import Any, get_args, get_origin

import pydantic
from pydantic import BaseModel

from crossdistill.errors import close_matches


def format_validation_error(
    exc: pydantic.ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> str:
    """One line per problem: the YAML path, what is wrong, what was given."""
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and "[" in p)]  # drop union tags
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
            msg = f"{err['msg']} (got {err.get('input')!r})"
        lines.append(f"  {path or '(top level)'}: {msg}")
    return "\n".join(lines)


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


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _submodel(arg)
            if found:
                return found
    return None
