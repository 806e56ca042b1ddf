"""``crossdistill export RUN --format F``: the student alone, parity-checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from crossdistill.cli._app import app, print_metrics


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="safetensors | torchscript | onnx | sentence-transformers | model2vec",
        ),
    ] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="quantize to int8")] = False,
    half: Annotated[
        bool, typer.Option("--half", help="float16 weights (sentence-transformers, model2vec)")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="default: RUN_DIR/export/<format>")] = None,
) -> None:
    """Export the student alone, parity-checked against the trained one on real examples."""
    from crossdistill.export import export_run

    folder = export_run(run_dir, format_, int8=int8, out=out, half=half)
    print_metrics(json.loads((folder / "parity.json").read_text()), f"export {folder}")
    typer.echo(str(folder))
