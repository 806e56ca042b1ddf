"""``crossdistill show [KIND] NAME``: one plug-in in full, from any registry."""

from __future__ import annotations

from typing import Annotated

import typer

from crossdistill.cli._app import app
from crossdistill.cli.list import KINDS, described


@app.command()
def show(
    first: Annotated[
        str,
        typer.Argument(metavar="[KIND] NAME", help=f"a plug-in's name; KIND: {' | '.join(KINDS)}"),
    ],
    name: Annotated[str | None, typer.Argument(hidden=True)] = None,
) -> None:
    """Show one plug-in: its import path, the first paragraph of its docstring, the paper it
    cites, what it needs (a loss: Knowledge keys of each side, the target), and its parameters
    with types and defaults. A name registered in two kinds needs its kind: `show models digits`.
    """
    from crossdistill.errors import UnknownNameError, did_you_mean
    from crossdistill.registry import import_object

    kind, name = (first, name) if name is not None else (None, first)
    if kind is not None and kind not in KINDS:
        raise UnknownNameError(f"unknown kind {kind!r}", hint=f"known: {', '.join(KINDS)}")
    registries = {k: import_object(KINDS[k], "show") for k in ([kind] if kind else KINDS)}
    found = [k for k, registry in registries.items() if name in registry]
    if not found:
        every = {n for registry in registries.values() for n in registry.names()}
        raise UnknownNameError(
            f"no {registries[kind].kind if kind else 'plug-in'} is registered as {name!r}",
            hint=f"{did_you_mean(name, every)}; `crossdistill list KIND` lists them",
        )
    if len(found) > 1:
        raise UnknownNameError(
            f"{name!r} names a plug-in of several kinds: {', '.join(found)}",
            hint=f"name the kind: {' or '.join(f'crossdistill show {k} {name}' for k in found)}",
        )
    head, *lines = described(found[0], registries[found[0]], name)
    typer.echo("\n".join([head, f"    kind: {found[0]}", *lines]))
