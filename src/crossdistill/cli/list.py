"""``crossdistill list KIND``: the registered plug-ins of one kind."""

from __future__ import annotations

import shutil
import textwrap
from typing import Annotated, Any

import typer

from crossdistill.cli._app import app

KINDS = {
    "losses": "crossdistill.losses:LOSSES",
    "models": "crossdistill.models.registry:MODELS",
    "adapters": "crossdistill.core.adapters:ADAPTERS",
    "data": "crossdistill.data.sources:DATA_SOURCES",
    "pipeline": "crossdistill.data.steps:PIPELINE_STEPS",
    "augmentations": "crossdistill.data.augment:AUGMENTATIONS",
    "exporters": "crossdistill.export:EXPORTERS",
    "suites": "crossdistill.suites:SUITES",
}
# Parameters crossdistill passes itself (the `fixed` arguments of build_adapter and load_source),
# which a recipe cannot set: --verbose leaves them out. Keep in step with those two functions.
SUPPLIED = {
    "adapters": ("student_shape", "teacher_shape", "student_layout", "teacher_layout"),
    "data": ("split",),
}


@app.command("list")
def list_(
    kind: Annotated[str, typer.Argument(help=" | ".join(KINDS))],
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="each one's summary and parameters with defaults"),
    ] = False,
) -> None:
    """List registered names (plug-in packages included); a suite with its options."""
    from crossdistill.errors import UnknownNameError
    from crossdistill.registry import import_object
    from crossdistill.suites.base import option_list

    if kind not in KINDS:
        raise UnknownNameError(f"unknown kind {kind!r}", hint=f"known: {', '.join(KINDS)}")
    registry = import_object(KINDS[kind], "list")
    for name in registry.names():
        options = getattr(registry.get(name), "Options", None)
        if not verbose:
            typer.echo(f"{name}  {option_list(registry.get(name))}" if options else name)
            continue
        info = registry.describe(name, exclude=SUPPLIED.get(kind, ()))
        lines = _described(info, option_list(registry.get(name)) if options else None)
        typer.echo("\n".join(lines) + "\n")


def _described(info: dict[str, Any], options: str | None) -> list[str]:
    """A plug-in as an indented block: name and import path, summary, one parameter a line,
    a suite's options."""
    width = min(shutil.get_terminal_size().columns, 100)
    summary = info["summary"].replace("``", "`") or "(no description)"
    lines = [f"{info['name']}  ({info['path']})"]
    lines += textwrap.wrap(summary, width, initial_indent="    ", subsequent_indent="    ")
    for p in info["params"]:
        default = "  (required)" if p["default"] == "required" else f" = {p['default']!r}"
        lines.append(f"    {p['name']}: {p['type']}{default}")
    if options is not None:
        lines.append(f"    options: {options}")
    elif not info["params"]:
        lines.append("    (no parameters)")
    return lines
