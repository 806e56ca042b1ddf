"""``crossdistill mine TEACHER_RUN --out FILE``: hard negatives, by a cross-encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossdistill.cli._app import app, key_values, print_metrics


@app.command()
def mine(
    teacher: Annotated[Path, typer.Argument(help="a run directory of a cross-encoder student")],
    out: Annotated[Path, typer.Option(help="the triples file to write (JSON lines)")],
    source: Annotated[str, typer.Option(help="a ranking data source")] = "wordnet_ranking",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="source parameter KEY=VALUE")
    ] = None,
    keep: Annotated[int, typer.Option(min=1, help="negatives kept per query")] = 3,
    split: Annotated[str, typer.Option(help="data split")] = "train",
    batch_size: Annotated[int, typer.Option(min=1, help="queries per teacher batch")] = 16,
) -> None:
    """Mine hard negatives with a cross-encoder: it scores each query's pool of candidates (the
    source's negatives) and the query keeps its positive and the ``--keep`` hardest negatives,
    written as a triples file for the ``triples`` data source."""
    from crossdistill.domains.ranking.mine import mine_to_file

    params = key_values(param, "--param")
    summary = mine_to_file(teacher, out, source, params, keep, split, batch_size)
    print_metrics({k: v for k, v in summary.items() if not isinstance(v, str)}, f"mine {out}")
    typer.echo(str(out))
