"""``crossdistill cache RECIPE``: write the knowledge store a recipe names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossdistill.cli._app import app, console, overrides
from crossdistill.cli._signals import command_line, on_interrupt


@app.command(context_settings={"allow_extra_args": True})
def cache(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="recipe YAML with a `store:` section")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override KEY=VALUE")] = None,
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="run the teacher in `torch` (default) or `onnx`: exported once to ONNX, "
            "parity-checked on the data, then run by onnxruntime (the `onnx` extra)",
        ),
    ] = "torch",
) -> None:
    """Write the knowledge store a recipe names: the teacher's outputs on every training
    example and recorded augmentation. Rerun after a crash: it continues where it stopped."""
    from crossdistill.config import load_recipe
    from crossdistill.pipeline import cache_recipe
    from crossdistill.store import KnowledgeStore

    set_ = overrides(set_, ctx.args)
    spec = load_recipe(recipe, set_)
    store = f"the knowledge store {spec.store.path}" if spec.store else "the knowledge store"
    options = ("--runtime", runtime) if runtime != "torch" else ()
    again = command_line("cache", recipe, set_ or [], *options)
    on_interrupt(lambda: f"{store} is not complete; finish it with: {again}")
    path = cache_recipe(spec, runtime=runtime)
    if KnowledgeStore.complete(path):
        store = KnowledgeStore(path, verify=False)
        per_example = store.nbytes() / store.num_examples
        console.print(
            f"knowledge store {path}: {store.num_examples:,} examples x {store.slots} "
            f"slots, keys {', '.join(store.keys)}, {store.nbytes() / 1e6:.1f} MB "
            f"({per_example:,.0f} bytes per example)"
        )
        typer.echo(str(path))
