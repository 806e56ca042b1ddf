"""``crossdistill bench PATH``: latency, throughput, size and agreement of a run's models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from crossdistill.cli._app import app


@app.command()
def bench(
    path: Annotated[Path, typer.Argument(help="a run directory or an export folder")],
    threads: Annotated[int, typer.Option(min=1, help="intra-op threads, for every model")] = 1,
    repeats: Annotated[int, typer.Option(min=1, help="batch-1 calls timed per model")] = 200,
    batches: Annotated[int, typer.Option(min=1, help="batch-64 calls timed per model")] = 20,
) -> None:
    """Latency, throughput, size, memory and agreement of the teacher, student and exports.

    A run directory's results go to RUN_DIR/bench.json, the run's one latency measurement:
    `crossdistill report` shows its numbers. The table's caption states the sample size."""
    from crossdistill.export.bench import bench as run_bench
    from crossdistill.export.bench import sample_size

    result = run_bench(path, threads=threads, repeats=repeats, batches=batches)
    rows = result["results"]
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    table = Table(
        title=f"bench {path} ({threads} thread{'s' * (threads > 1)})",
        caption=sample_size(result),
    )
    short = {"p50_ms_b1": "p50 ms", "p95_ms_b1": "p95 ms", "throughput_b64": "ex/s b64"}
    short |= {"peak_mem_mb": "peak MB", "size_mb": "MB", "accuracy": "acc"}
    short |= {"top1_agreement": "agree", "max_abs_diff": "max diff"}
    table.add_column("model", no_wrap=True)
    for column in columns:
        table.add_column(short.get(column, column), justify="right", no_wrap=True)
    for name, row in rows.items():
        cells = [row.get(c) for c in columns]
        table.add_row(
            name,
            *("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in cells),
        )
    Console(width=max(Console().width, 120)).print(table)
