"""``crossdistill report RUN...``: one HTML page of plots and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossdistill.cli._app import app


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="one or more run directories")],
    out: Annotated[
        Path | None, typer.Option(help="HTML file (default: RUN_DIR/report.html for one run)")
    ] = None,
    examples: Annotated[
        int, typer.Option(help="at most this many eval examples for the confusion matrix")
    ] = 2000,
) -> None:
    """Write one self-contained HTML page of plots and tables for one or more runs.

    Latency is each run's bench.json (`crossdistill bench RUN`): read when present and newer
    than the student, otherwise measured the same way once and written; the page states its
    sample size, date and machine."""
    from crossdistill.report import write_report

    typer.echo(str(write_report(run_dirs, out=out, max_examples=examples)))
