"""``crossdistill cache RECIPE``: write the knowledge store a recipe names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossdistill.cli._app import app, console


@app.command()
def cache(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML with a `store:` section")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override KEY=VALUE")] = None,
) -> None:
    """Write the knowledge store a recipe names: the teacher's outputs on every training
    example and recorded augmentation. Rerun after a crash: it continues where it stopped."""
    from crossdistill.config import load_recipe
    from crossdistill.pipeline import cache_recipe
    from crossdistill.store import KnowledgeStore

    path = cache_recipe(load_recipe(recipe, set_))
    if KnowledgeStore.complete(path):
        store = KnowledgeStore(path, verify=False)
        per_example = store.nbytes() / store.num_examples
        console.print(
            f"knowledge store {path}: {store.num_examples:,} examples x {store.slots} "
            f"slots, keys {', '.join(store.keys)}, {store.nbytes() / 1e6:.1f} MB "
            f"({per_example:,.0f} bytes per example)"
        )
        typer.echo(str(path))
