"""A ``crossdistill tune`` study in the report: its best trial and its baseline as runs, and a
section with the study's table and plots (read from the files the study wrote)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from html import escape as e
from pathlib import Path
from typing import Any

from crossdistill.report.data import ReportError
from crossdistill.report.page import _figure_html, _grid, _section

STUDY_FILE = "study.json"


@dataclass
class Study:
    """A study folder and its ``study.json``."""

    path: Path
    summary: dict[str, Any]

    @property
    def runs(self) -> list[Path]:
        """The run folders the report shows: the baseline (when the study trained one), then
        the best trial."""
        found = []
        baseline = self.summary.get("baseline") or {}
        if isinstance(baseline.get("run"), str):
            found.append(self.path / baseline["run"])
        best = self.summary.get("best")
        if best is not None:
            found.append(self.path / "trials" / f"trial-{best['number']}")
        return [run for run in found if run.is_dir()]


def open_study(path: Path) -> Study | None:
    """The study in ``path`` (None when it is not a study folder: no study.json)."""
    file = path / STUDY_FILE
    if not file.is_file():
        return None
    try:
        summary = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{file} cannot be read: {exc}") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{file} is not a study summary (a JSON object)")
    study = Study(path, summary)
    if not study.runs:
        raise ReportError(
            f"the study in {path} has no finished trial or baseline run to show",
            hint=f"run more trials: crossdistill tune RECIPE --study-dir {path}",
        )
    return study


def study_section(study: Study) -> str:
    """The study's numbers (trials by state, best and baseline on the validation split, the
    best values) and its two plots, when it wrote them."""
    s = study.summary
    metric = e(str(s.get("metric")))
    counts = ", ".join(f"{n} {e(state)}" for state, n in (s.get("counts") or {}).items() if n)
    best = s.get("best") or {}
    baseline = s.get("baseline") or {}
    rows = [
        ("trials", counts or "none"),
        (f"best {metric} (validation)", _value(best.get("value"), best.get("number"))),
        (f"baseline {metric} (validation)", _value(baseline.get("value"))),
    ]
    rows += [(e(k), _value(v)) for k, v in (best.get("params") or {}).items()]
    table = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    figures = [
        _figure_html(title, "", base64.b64encode(png.read_bytes()).decode("ascii"), title)
        for title, png in (
            ("Optimisation history", study.path / "history.png"),
            ("Parameter importances", study.path / "importance.png"),
        )
        if png.is_file()
    ]
    lede = (
        f"The study in {e(str(study.path))}: every trial scored on the "
        f"{e(str(s.get('split', 'validation')))} split at its last epoch; the runs above are "
        "its baseline (the student without the teacher's losses) and its best trial."
    )
    inner = f'<div class="table-wrap"><table><tbody>{table}</tbody></table></div>'
    inner += _grid(figures) if figures else ""
    return _section("Tuning study", lede, inner, "study")


def _value(value: Any, trial: Any = None) -> str:
    if value is None:
        return "—"
    text = f"{value:.4g}" if isinstance(value, float) else e(str(value))
    return f"{text} (trial {trial})" if trial is not None else text
