"""``crossdistill list KIND``: the registered plug-ins of one kind."""

from __future__ import annotations

from typing import Annotated

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


@app.command("list")
def list_(
    kind: Annotated[str, typer.Argument(help=" | ".join(KINDS))],
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
        typer.echo(f"{name}  {option_list(registry.get(name))}" if options else name)
