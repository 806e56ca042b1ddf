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
    "callbacks": "crossdistill.train.callbacks:CALLBACKS",
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
        typer.Option(
            "--verbose", "-v", help="each one's summary, paper, needs and parameters with defaults"
        ),
    ] = False,
) -> None:
    """List registered names (plug-in packages included); a suite with its options."""
    from crossdistill.errors import UnknownNameError

    if kind not in KINDS:  # said before the registries (and torch) load
        raise UnknownNameError(f"unknown kind {kind!r}", hint=f"known: {', '.join(KINDS)}")
    from crossdistill.registry import import_object
    from crossdistill.suites.base import option_list

    registry = import_object(KINDS[kind], "list")
    for name in registry.names():
        options = getattr(registry.get(name), "Options", None)
        if not verbose:
            typer.echo(f"{name}  {option_list(registry.get(name))}" if options else name)
            continue
        typer.echo("\n".join(described(kind, registry, name)) + "\n")


def described(kind: str, registry: Any, name: str) -> list[str]:
    """A plug-in as an indented block: name and import path, summary, paper, what it needs
    (a loss), one parameter a line, a suite's options."""
    from crossdistill.suites.base import option_list

    info = registry.describe(name, exclude=SUPPLIED.get(kind, ()))
    plugin = registry.resolve(name)
    options = option_list(plugin) if getattr(plugin, "Options", None) else None
    width = min(shutil.get_terminal_size().columns, 100)
    summary = info["summary"].replace("``", "`") or "(no description)"
    lines = [f"{info['name']}  ({info['path']})"]
    lines += textwrap.wrap(summary, width, initial_indent="    ", subsequent_indent="    ")
    if info.get("paper"):
        lines.append(f"    paper: {info['paper']}")
    lines += [f"    needs: {text}" for text in [needs(registry, name)] if text]
    for p in info["params"]:
        default = "  (required)" if p["default"] == "required" else f" = {p['default']!r}"
        lines.append(f"    {p['name']}: {p['type']}{default}")
    if options is not None:
        lines.append(f"    options: {options}")
    elif not info["params"]:
        lines.append("    (no parameters)")
    return lines


def needs(registry: Any, name: str) -> str | None:
    """What a plug-in that declares ``needs()`` (a loss) reads: Knowledge keys of the student
    and the teacher, and whether it needs the target. Read from the plug-in built with its
    defaults, since keys may follow its parameters; from its class when a parameter is
    required. None for plug-ins that declare nothing."""
    from crossdistill.errors import CrossDistillError

    plugin = registry.resolve(name)
    if not callable(getattr(plugin, "needs", None)):
        return None
    try:
        declared = registry.build(name).needs()
        student, teacher, target = declared.student, declared.teacher, declared.target
        depends = ""
    except CrossDistillError:  # a required parameter (often the tap names themselves)
        student = getattr(plugin, "needs_student", ())
        teacher = getattr(plugin, "needs_teacher", ())
        target = getattr(plugin, "needs_target", False)
        declared_any = student or teacher
        depends = " (the class's; the keys may follow its parameters)" if declared_any else ""
    parts = [
        f"student {', '.join(student) or '(set by its parameters)'}",
        f"teacher {', '.join(teacher) or '(set by its parameters)'}",
        f"target {'yes' if target else 'no'}",
    ]
    return "; ".join(parts) + depends
