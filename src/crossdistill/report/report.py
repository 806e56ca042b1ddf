"""Run directories → one self-contained HTML page: curves, confusion matrix, Pareto plot, config.

The public entry points; reading and measuring runs is in :mod:`.data`, the figures in
:mod:`.figures` and the HTML in :mod:`.page`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from crossdistill._util.files import write_atomic, write_errors
from crossdistill._version import __version__
from crossdistill.errors import require
from crossdistill.report.data import (
    DEFAULT_MAX_EXAMPLES,
    RUN_COLORS,
    ReportError,
    RunData,
    load_run,
    measure,
    read_metrics,
    write_tensorboard,
)
from crossdistill.report.figures import RC, pareto_front
from crossdistill.report.page import render_page
from crossdistill.report.study import open_study, study_section
from crossdistill.runs import Run


def render_report(
    runs: Sequence[RunData],
    notes: Sequence[str] = (),
    threads: int = 1,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    footnotes: Sequence[str] = (),
    sections: Sequence[str] = (),
) -> str:
    """The HTML page of runs already read (and measured).

    ``notes`` (HTML) go in the warning box at the top, ``footnotes`` (text) in the footer,
    ``sections`` (HTML) after the summary.
    """
    matplotlib = require("matplotlib", "crossdistill report", "pip install matplotlib", ReportError)
    with matplotlib.rc_context(RC):
        return render_page(runs, notes, threads, max_examples, __version__, footnotes, sections)


def write_report(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    threads: int = 1,
    tensorboard: bool = True,
) -> Path:
    """Write the HTML report of one or more run directories; returns its path.

    A ``crossdistill tune`` study folder stands for its baseline and best trial, and adds a
    section of the study's numbers and plots. Default output: ``RUN_DIR/report.html`` for one
    run (``STUDY_DIR/report.html`` for one study); several need ``out``. The page is written to
    a temporary file and renamed, so a failure leaves no partial report behind.
    """
    if not run_dirs:
        raise ReportError("no run directory given", hint="crossdistill report runs/<name>")
    if max_examples < 1:
        raise ReportError(f"max_examples must be >= 1, got {max_examples}")
    studies = {Path(d): open_study(Path(d)) for d in run_dirs}
    if out is None and len(run_dirs) == 1 and studies[Path(run_dirs[0])] is not None:
        out = Path(run_dirs[0]) / "report.html"
    dirs = [r for d, study in studies.items() for r in (study.runs if study else [d])]
    runs = [load_run(d) for d in dirs]  # every input is checked before any work
    if out is None:
        if len(runs) > 1:
            raise ReportError(
                "several runs need an output file",
                hint="pass --out report.html (one run defaults to RUN_DIR/report.html)",
            )
        out = Run(runs[0].run_dir).report_file
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"--out {out} is a folder", hint="give a file name like report.html")
    _distinct_names(runs)
    footnotes: list[str] = []
    for i, run in enumerate(runs):
        run.color = RUN_COLORS[i % len(RUN_COLORS)]
        measure(run, max_examples, threads)
        if tensorboard:
            with write_errors(Run(run.run_dir).tensorboard_dir, "TensorBoard's event files"):
                tb = write_tensorboard(run)
            if tb not in footnotes:
                footnotes.append(tb)
    sections = [study_section(study) for study in studies.values() if study is not None]
    page = render_report(runs, (), threads, max_examples, footnotes, sections)
    write_atomic(out, page, what="the report")
    return out


def _distinct_names(runs: Sequence[RunData]) -> None:
    """Runs with the same folder name are told apart by their parent folder."""
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = f"{run.run_dir.resolve().parent.name}/{run.name}"


__all__ = [
    "ReportError",
    "RunData",
    "load_run",
    "measure",
    "pareto_front",
    "read_metrics",
    "render_report",
    "write_report",
    "write_tensorboard",
]
