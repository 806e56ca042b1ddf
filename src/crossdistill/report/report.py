"""Run directories → one self-contained HTML page: curves, confusion matrix, Pareto plot, config.

The page embeds every figure as a base64 PNG drawn with matplotlib's Agg renderer (through
``matplotlib.figure.Figure``, never pyplot, so nothing global changes), needs no network and no
JavaScript. A three-line script only records, in ``<html data-images="ok/total">``, how many images
decoded: the headless-browser test reads it back.

What is measured here and not read from the run directory:

- the confusion matrix: the student on (at most ``max_examples`` of) the run's eval split, on CPU;
- latency: :func:`crossdistill.evaluate.latency.latency_ms` at batch 1 on CPU, the same number of
  threads for every run, the model's forward only (its input pipeline applied beforehand);
- size: ``student.safetensors`` on disk.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import torch
import yaml

from crossdistill.errors import CrossDistillError

# Keys of a "step" record that are not loss terms.
STEP_META = frozenset({"time", "kind", "epoch", "step", "lr"})
# One colour per run, the same in every figure and in the table's swatches (seaborn "deep").
RUN_COLORS = [
    "#4C72B0",
    "#DD8452",
    "#55A868",
    "#C44E52",
    "#8172B3",
    "#937860",
    "#DA8BC3",
    "#8C8C8C",
    "#CCB974",
    "#64B5CD",
]
# Loss terms get their own palette (muted "colorblind"), the total is drawn in ink.
TERM_COLORS = ["#0173B2", "#DE8F05", "#029E73", "#D55E00", "#CC78BC", "#CA9161", "#56B4E9"]
TOTAL_COLOR = "#2B2F36"
DEFAULT_MAX_EXAMPLES = 2000


class ReportError(CrossDistillError):
    """A run directory that no report can be made of."""


@dataclass
class RunData:
    """One run directory as the report sees it: its records, files and what was measured."""

    run_dir: Path
    name: str
    config_text: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    student: dict[str, Any] | None = None  # student.json
    size_bytes: int | None = None
    latency_ms: float | None = None
    confusion: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    cm_examples: int = 0
    cm_total: int = 0
    color: str = RUN_COLORS[0]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == kind]

    @property
    def finished(self) -> bool:
        return self.student is not None and self.size_bytes is not None

    @property
    def loss_terms(self) -> list[str]:
        """Logged loss names in first-seen order, the total ``loss`` first."""
        names: dict[str, None] = {}
        for rec in self.of_kind("step"):
            for key, value in rec.items():
                if key not in STEP_META and isinstance(value, (int, float)):
                    names.setdefault(key, None)
        ordered = list(names)
        return sorted(ordered, key=lambda k: k != "loss")

    @property
    def has_teacher(self) -> bool:
        return any("agreement" in r for r in self.of_kind("eval"))


# ------------------------------------------------------------------------------ reading


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a metrics.jsonl and notes about lines that had to be skipped.

    A run killed while writing leaves a partial last line: it is skipped with a note, not fatal.
    """
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("kind"), str):
            records.append(record)
        elif i == last:
            notes.append(
                f"metrics.jsonl: the last line ({i + 1}) is truncated — the run stopped while "
                "writing it; it was skipped."
            )
        else:
            notes.append(f"metrics.jsonl: line {i + 1} is not a JSON record; it was skipped.")
    return records, notes


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory (config, metrics, student files); raises :class:`ReportError`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(
            f"{run_dir} {'is not a folder' if run_dir.exists() else 'does not exist'}",
            hint="pass the run directory that `crossdistill run` printed, e.g. runs/<name>",
        )
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ReportError(
            f"{run_dir} is not a run directory (no config.yaml)",
            hint="pass the run directory that `crossdistill run` printed, e.g. runs/<name>",
        )
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise ReportError(
            f"{run_dir} has no metrics.jsonl: the run never logged a training step",
            hint="train it first with `crossdistill run RECIPE` (or resume it with --resume)",
        )
    records, notes = read_metrics(metrics_path)
    if not records:
        raise ReportError(
            f"{metrics_path} holds no complete record",
            hint="the run stopped before its first log line; resume it with --resume",
        )
    config_text = config_path.read_text(errors="replace")
    try:
        config = yaml.safe_load(config_text)
    except yaml.YAMLError:
        config = None
    if not isinstance(config, dict):
        notes.append("config.yaml is not a YAML mapping; it is shown as it is.")
        config = {}
    run = RunData(run_dir, run_dir.resolve().name, config_text, config, records, notes)
    for rec in run.of_kind("error"):
        notes.append(
            f"training stopped at epoch {rec.get('epoch', '?')}, step {rec.get('step', '?')}: "
            f"{rec.get('error', 'error')}."
        )
    evals = run.of_kind("eval")
    final_path = run_dir / "eval.json"
    final: Any = None
    if final_path.is_file():
        try:
            final = json.loads(final_path.read_text())
        except json.JSONDecodeError:
            notes.append("eval.json is not valid JSON; the last logged evaluation is used.")
    if not isinstance(final, dict):
        final = {k: v for k, v in evals[-1].items() if k not in STEP_META} if evals else {}
    run.final = {k: v for k, v in final.items() if isinstance(v, (int, float))}
    weights = run_dir / "student.safetensors"
    meta = run_dir / "student.json"
    if weights.is_file() and meta.is_file():
        run.student = json.loads(meta.read_text())
        run.size_bytes = weights.stat().st_size
    else:
        notes.append(
            "the run has not finished (no student.safetensors/student.json): no confusion "
            "matrix, latency or size."
        )
    return run


# ------------------------------------------------------------------------------ measuring


def measure(run: RunData, max_examples: int, threads: int) -> None:
    """Confusion matrix on the eval split (bounded) and batch-1 CPU latency of the student."""
    if not run.finished:
        return
    from crossdistill.config import load_recipe
    from crossdistill.evaluate.latency import latency_ms
    from crossdistill.experiment import build_eval_loader, load_student

    device = torch.device("cpu")
    try:
        # workers would only add start-up time for a few batches
        recipe = load_recipe(run.run_dir / "config.yaml", ["data.num_workers=0"])
        student = load_student(run.run_dir).to(device).eval()
        loader = build_eval_loader(recipe, device)
    except CrossDistillError as exc:
        run.notes.append(f"the student could not be evaluated: {exc.message}")
        return
    dataset = loader.dataset
    run.cm_total = len(dataset)
    names = getattr(dataset, "class_names", None) or getattr(
        getattr(dataset, "dataset", None), "class_names", None
    )
    preds: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    example: torch.Tensor | None = None
    seen = 0
    with torch.no_grad():
        for batch in loader:
            x = batch["views"]["student"]
            if example is None:
                example = x[:1]
            if seen >= max_examples:
                break
            out = student(x)
            if "logits" not in out or out["logits"].ndim != 2:
                run.notes.append("the student has no 2-D logits output: no confusion matrix.")
                preds = []
                break
            take = min(len(x), max_examples - seen)
            preds.append(out["logits"][:take].argmax(dim=1))
            targets.append(batch["target"][:take])
            seen += take
    if preds:
        y_pred, y_true = torch.cat(preds).numpy(), torch.cat(targets).numpy()
        n = max(len(names or []), int(y_pred.max()) + 1, int(y_true.max()) + 1)
        cm = np.zeros((n, n), dtype=np.int64)
        np.add.at(cm, (y_true, y_pred), 1)
        run.confusion, run.cm_examples = cm, seen
        run.class_names = list(names) if names and len(names) == n else [str(i) for i in range(n)]
    if example is not None:
        with torch.no_grad():
            prepared = student.pipeline(example)
        run.latency_ms = latency_ms(student.model, prepared, threads=threads)


def write_tensorboard(run: RunData) -> str:
    """TensorBoard event files in ``RUN_DIR/tensorboard/`` from metrics.jsonl; returns a note."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return (
            "TensorBoard event files were not written: tensorboard is not installed "
            "(pip install tensorboard)."
        )
    target = run.run_dir / "tensorboard"
    target.mkdir(exist_ok=True)
    for old in target.glob("events.out.tfevents.*"):  # a report rewrites its own events
        old.unlink()
    writer = SummaryWriter(log_dir=str(target))
    try:
        for rec in run.records:
            kind, step, wall = rec.get("kind"), int(rec.get("step", 0)), rec.get("time")
            prefix = {"step": "train", "epoch": "epoch", "eval": "eval"}.get(str(kind))
            if prefix is None:
                continue
            for key, value in rec.items():
                if key in ("time", "kind", "step", "epoch") or not isinstance(value, (int, float)):
                    continue
                writer.add_scalar(f"{prefix}/{key}", value, step, walltime=wall)
    finally:
        writer.close()
    return f"TensorBoard event files written to {target}."


# ------------------------------------------------------------------------------ figures

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#AEB6C1",
    "axes.linewidth": 0.8,
    "axes.labelcolor": "#3B4450",
    "axes.labelsize": 9.5,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#E8EBF0",
    "grid.linewidth": 0.8,
    "xtick.color": "#5B6470",
    "ytick.color": "#5B6470",
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "lines.linewidth": 1.7,
    "savefig.dpi": 150,
}


def _figure(width: float = 5.4, height: float = 3.2) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: Any) -> str:
    """A figure as a base64 PNG (Agg, through Figure.savefig: no pyplot, no global backend)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _wide_range(values: Sequence[float]) -> bool:
    """Log scale when every value is positive and they span more than a factor of ten."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 10


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _log_axis(axis: Any) -> None:
    """Log scale with plain tick labels (0.2, 0.5, 1, 2) instead of 2×10⁻¹."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _legend(fig: Any, ax: Any, n: int) -> None:
    """Legend under the plot when it names several runs (as many columns as fit), else inside."""
    if n > 2:
        labels = ax.get_legend_handles_labels()[1]
        widest = max((len(label) for label in labels), default=10)
        fig.legend(loc="outside lower center", ncols=max(1, min(n, 66 // (widest + 6))))
    else:
        ax.legend(loc="best")


def _smooth(values: Sequence[float], alpha: float = 0.15) -> list[float]:
    """Exponential moving average, debiased at the start (as TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = (1 - alpha) * avg + alpha * v
        out.append(avg / (1 - (1 - alpha) ** (i + 1)))
    return out


def fig_losses(run: RunData) -> str:
    steps = run.of_kind("step")
    terms = run.loss_terms
    if len(terms) == 2 and all(r.get(terms[0]) == r.get(terms[1]) for r in steps):
        terms = terms[1:]  # one term: it is the total
    fig = _figure()
    ax = fig.subplots()
    values: list[float] = []
    for i, term in enumerate(terms):
        rows = [r for r in steps if isinstance(r.get(term), (int, float))]
        xs, ys = [r["step"] for r in rows], [float(r[term]) for r in rows]
        values += ys
        total = term == "loss"
        color = TOTAL_COLOR if total else TERM_COLORS[(i - (terms[0] == "loss")) % len(TERM_COLORS)]
        label = "total" if total else term + (" (= total)" if len(terms) == 1 else "")
        if len(ys) > 60:  # noisy long curves: raw values faint, their moving average solid
            ax.plot(xs, ys, color=color, linewidth=0.8, alpha=0.25)
            ys = _smooth(ys)
        ax.plot(xs, ys, label=label, color=color, linewidth=2.0 if total else 1.6, zorder=3 - i)
    if _wide_range(values):
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (log scale)" if ax.get_yscale() == "log" else "loss")
    ax.legend(loc="upper right", ncols=min(4, len(terms)))
    return _png(fig)


def fig_lr(runs: Sequence[RunData]) -> str:
    fig = _figure()
    ax = fig.subplots()
    schedules: dict[tuple[tuple[float, float], ...], list[RunData]] = {}
    for run in runs:
        rows = [r for r in run.of_kind("step") if isinstance(r.get("lr"), (int, float))]
        schedules.setdefault(tuple((r["step"], r["lr"]) for r in rows), []).append(run)
    for points, same in schedules.items():  # runs with one schedule share one line
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            color=same[0].color if len(same) == 1 else "#6B7380",
            label=same[0].name if len(same) == 1 else f"{len(same)} runs",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_ylim(bottom=0)
    _legend(fig, ax, len(schedules))
    return _png(fig)


def fig_per_epoch(
    runs: Sequence[RunData], key: str, label: str, percent: bool, teacher_key: str | None = None
) -> str:
    fig = _figure(5.4, 3.2 + (0.3 if len(runs) > 2 else 0))
    ax = fig.subplots()
    values: list[float] = []
    teachers: dict[float, list[str]] = {}
    scale = 100.0 if percent else 1.0
    for run in runs:
        evals = [r for r in run.of_kind("eval") if isinstance(r.get(key), (int, float))]
        if not evals:
            continue
        xs = [r["epoch"] for r in evals]
        ys = [scale * float(r[key]) for r in evals]
        values += ys
        ax.plot(xs, ys, color=run.color, marker="o", markersize=3.2, label=run.name)
        if teacher_key and isinstance(evals[-1].get(teacher_key), (int, float)):
            teachers.setdefault(round(scale * float(evals[-1][teacher_key]), 6), []).append(
                run.color
            )
    for value, colors in teachers.items():  # one line per distinct teacher
        ax.axhline(
            value,
            color=colors[0] if len(colors) == 1 else "#6B7380",
            linestyle=(0, (4, 3)),
            linewidth=1.1,
            label="teacher",
        )
    if not percent and _wide_range(values):
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    _integer_epochs(ax)
    _legend(fig, ax, len(runs) + len(teachers))
    return _png(fig)


def fig_confusion(run: RunData) -> str:
    from matplotlib.colors import LinearSegmentedColormap, to_rgb

    assert run.confusion is not None
    cm = run.confusion
    n = len(cm)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    side = min(7.5, max(4.0, 0.3 * n + 2.0))
    fig = _figure(side + 0.7, side)
    ax = fig.subplots()
    ax.grid(False)
    # white → the run's colour → the run's colour darkened: cells read like the run's swatch
    base = np.array(to_rgb(run.color))
    cmap = LinearSegmentedColormap.from_list(
        "report", ["#FFFFFF", tuple(0.35 * base + 0.65), tuple(base), tuple(0.45 * base)]
    )
    image = ax.imshow(norm, cmap=cmap, vmin=0.0, vmax=1.0)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j] == 0:
                    continue
                ax.text(
                    j,
                    i,
                    f"{100 * norm[i, j]:.0f}" if norm[i, j] >= 0.005 else "<1",
                    ha="center",
                    va="center",
                    fontsize=7.5 if n > 10 else 8.5,
                    color="white" if norm[i, j] > 0.55 else "#2B2F36",
                )
    ticks = range(n)
    ax.set_xticks(ticks, run.class_names, rotation=45 if n > 6 else 0, ha="right")
    ax.set_yticks(ticks, run.class_names)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    bar = fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02)
    bar.outline.set_visible(False)
    bar.set_label("share of the true class (%)")
    bar.set_ticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0", "25", "50", "75", "100"])
    return _png(fig)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each ``(cost, accuracy)``: True when no other point is as cheap and as accurate,
    and strictly better in one of the two."""
    out = []
    for i, (c, a) in enumerate(points):
        dominated = any(
            c2 <= c and a2 >= a and (c2 < c or a2 > a)
            for j, (c2, a2) in enumerate(points)
            if j != i
        )
        out.append(not dominated)
    return out


def _label_offsets(xs: Sequence[float], ys: Sequence[float]) -> list[tuple[int, int]]:
    """Label offsets (points): below-right for a point just under a neighbour, else above."""
    span = (max(ys) - min(ys)) or 1.0
    xspan = (max(xs) - min(xs)) or 1.0
    out = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        crowded = any(
            0 < y2 - y < 0.12 * span and abs(x2 - x) < 0.35 * xspan
            for j, (x2, y2) in enumerate(zip(xs, ys, strict=True))
            if j != i
        )
        out.append((8, -12) if crowded else (8, 5))
    return out


def fig_pareto(runs: Sequence[RunData], costs: Sequence[float], xlabel: str) -> str:
    from matplotlib.ticker import FuncFormatter

    fig = _figure(5.4, 3.4)
    ax = fig.subplots()
    accs = [100 * r.final["accuracy"] for r in runs]
    front = pareto_front(list(zip(costs, accs, strict=True)))
    line = sorted((c, a) for c, a, f in zip(costs, accs, front, strict=True) if f)
    if len(line) > 1:
        ax.plot(
            [c for c, _ in line],
            [a for _, a in line],
            drawstyle="steps-post",
            color="#8A93A0",
            linestyle=(0, (4, 3)),
            linewidth=1.2,
            zorder=1,
            label="Pareto front",
        )
    log = _wide_range(costs)
    where = [math.log10(c) for c in costs] if log else list(costs)
    offsets = _label_offsets(where, accs)
    for run, c, a, f, off in zip(runs, costs, accs, front, offsets, strict=True):
        ax.scatter(
            [c],
            [a],
            s=80 if f else 50,
            color=run.color,
            edgecolors=TOTAL_COLOR if f else "white",
            linewidths=1.6 if f else 0.8,
            zorder=3,
        )
        ax.annotate(
            run.name, (c, a), xytext=off, textcoords="offset points", fontsize=8, color="#3B4450"
        )
    if log:
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.margins(x=0.25, y=0.22)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    if len(line) > 1:
        ax.legend(loc="lower right")
    return _png(fig)


# ------------------------------------------------------------------------------ HTML

CSS = """
:root { --fg:#1F2430; --muted:#5D6675; --line:#E3E7ED; --bg:#F5F6F8; --accent:#4C72B0; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue",
        Arial, "Noto Sans", "DejaVu Sans", sans-serif; }
.wrap { max-width: 1200px; margin: 0 auto; padding: 0 28px; }
header.top { background: #fff; border-bottom: 1px solid var(--line); padding: 26px 0 20px; }
.brand { font-size: 12px; letter-spacing: .09em; text-transform: uppercase; color: var(--accent);
  font-weight: 700; }
h1 { font-size: 27px; line-height: 1.25; margin: 4px 0 6px; font-weight: 650;
  letter-spacing: -.015em; overflow-wrap: anywhere; }
h2 { font-size: 19px; margin: 38px 0 2px; font-weight: 650; letter-spacing: -.01em; }
.lede { color: var(--muted); margin: 0 0 14px; font-size: 14px; max-width: 860px; }
.meta { color: var(--muted); font-size: 13px; margin: 0; }
.meta span + span::before { content: "·"; margin: 0 8px; color: #B4BBC6; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(165px, 1fr)); gap: 14px;
  margin-top: 26px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 13px 16px; }
.card .k { font-size: 11.5px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .06em; font-weight: 600; }
.card .v { font-size: 25px; font-weight: 650; font-variant-numeric: tabular-nums; margin-top: 2px; }
.card .s { font-size: 12.5px; color: var(--muted); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(470px, 1fr)); gap: 18px; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 14px 16px 12px; display: flex; flex-direction: column; }
figure img { width: 100%; height: auto; display: block; margin-top: 10px; }
figcaption { font-size: 13px; color: var(--muted); }
figcaption b { display: block; color: var(--fg); font-size: 14.5px; font-weight: 620;
  margin-bottom: 1px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 3px;
  margin-right: 8px; }
.table-wrap { overflow-x: auto; background: #fff; border: 1px solid var(--line);
  border-radius: 10px; }
table { border-collapse: collapse; width: 100%; font-size: 13px;
  font-variant-numeric: tabular-nums; }
th, td { padding: 9px 10px; text-align: right; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
th { font-weight: 600; color: var(--muted); font-size: 12px; background: #FAFBFC; }
th:first-child, td:first-child { padding-left: 16px; }
th:last-child, td:last-child { padding-right: 16px; }
th:first-child, td:first-child { text-align: left; }
tbody tr:last-child td { border-bottom: none; }
td.best { font-weight: 700; }
td .sub { color: var(--muted); font-size: 12px; }
.tag { display: inline-block; font-size: 11px; font-weight: 600; padding: 1px 8px;
  border-radius: 999px; background: #EAF0F9; color: #2F5597; margin-left: 2px; }
.muted { color: var(--muted); }
.notes { background: #FFF9EB; border: 1px solid #F0DDAA; border-radius: 10px;
  padding: 10px 18px; font-size: 13.5px; margin-top: 22px; }
.notes ul { margin: 4px 0; padding-left: 18px; }
details { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  margin: 10px 0; }
summary { cursor: pointer; padding: 10px 16px; font-weight: 600; font-size: 14px; }
pre { margin: 0; padding: 12px 16px; border-top: 1px solid var(--line); background: #FBFCFD;
  font: 12.5px/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
  overflow-x: auto; border-radius: 0 0 10px 10px; }
footer { color: var(--muted); font-size: 12.5px; padding-top: 34px; padding-bottom: 40px; }
@media (max-width: 760px) { .grid { grid-template-columns: 1fr; } .wrap { padding: 0 16px; } }
"""

# Not needed to read the page: records how many images decoded, for the headless-browser test.
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.documentElement.setAttribute("data-images", ok + "/" + imgs.length);
});
"""

PAGE = Template(
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="crossdistill report">
<title>$title</title>
<style>$css</style>
</head>
<body>
<header class="top"><div class="wrap">
<div class="brand">crossdistill report</div>
<h1>$heading</h1>
<p class="meta">$meta</p>
</div></header>
<main class="wrap">
$body
</main>
<footer class="wrap">$footer</footer>
<script>$script</script>
</body>
</html>
"""
)

e = html.escape


def _figure_html(title: str, caption: str, png: str, alt: str) -> str:
    return (
        f"<figure><figcaption><b>{e(title)}</b>{caption}</figcaption>"
        f'<img src="data:image/png;base64,{png}" alt="{e(alt)}"></figure>'
    )


def _section(title: str, lede: str, inner: str, anchor: str) -> str:
    lede_html = f'<p class="lede">{lede}</p>' if lede else ""
    return f'<section id="{anchor}"><h2>{e(title)}</h2>{lede_html}{inner}</section>'


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    if value is None or not math.isfinite(value):
        return '<span class="muted">—</span>'
    return f"{value:{spec}}{suffix}"


def _size(n: int | None) -> str:
    if n is None:
        return '<span class="muted">—</span>'
    return f"{n / 1024:,.1f} KiB" if n < 1024**2 else f"{n / 1024**2:,.2f} MiB"


def _swatch(run: RunData) -> str:
    return f'<span class="swatch" style="background:{run.color}"></span>{e(run.name)}'


def _student_label(run: RunData) -> str:
    student = run.student or run.config.get("student") or {}
    return str(student.get("model", "?"))


def _params(run: RunData) -> int | None:
    value = (run.student or {}).get("parameters")
    return int(value) if isinstance(value, (int, float)) else None


def _train_seconds(run: RunData) -> float | None:
    secs = [
        r["seconds"] for r in run.of_kind("epoch") if isinstance(r.get("seconds"), (int, float))
    ]
    return sum(secs) if secs else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return '<span class="muted">—</span>'
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _epochs(run: RunData) -> str:
    done = max((int(r.get("epoch", 0)) for r in run.of_kind("epoch")), default=0)
    planned = (run.config.get("train") or {}).get("epochs")
    return f"{done}/{planned}" if planned else str(done)


def _summary_table(runs: Sequence[RunData], fronts: dict[str, list[bool]]) -> str:
    def best(values: list[float | None], higher: bool) -> float | None:
        found = [v for v in values if v is not None and math.isfinite(v)]
        if len(runs) < 2 or not found:
            return None
        return max(found) if higher else min(found)

    acc = [r.final.get("accuracy") for r in runs]
    lat = [r.latency_ms for r in runs]
    size = [float(r.size_bytes) if r.size_bytes is not None else None for r in runs]
    top_keys = sorted({k for r in runs for k in r.final if k.startswith("top")})
    top_key = top_keys[0] if top_keys else None
    best_acc, best_lat, best_size = best(acc, True), best(lat, False), best(size, False)
    cls = ' class="best"'
    head = (
        "<tr><th>Run</th><th>Student</th><th>Params</th><th>Size</th><th>Latency</th>"
        f"<th>Accuracy</th><th>{e(top_key.replace('_accuracy', '')) if top_key else 'Top-k'}"
        "</th><th>ECE</th><th>Agreement</th><th>KL(t‖s)</th><th>Epochs</th><th>Training</th>"
        + ("<th>Pareto</th>" if fronts else "")
        + "</tr>"
    )
    rows = []
    for i, run in enumerate(runs):
        f = run.final
        params = _params(run)
        on = [name for name, front in fronts.items() if front[i]]
        rows.append(
            "<tr>"
            f"<td>{_swatch(run)}</td>"
            f"<td>{e(_student_label(run))}</td>"
            f"<td>{_fmt(params, ',d') if params is not None else _fmt(None, '')}</td>"
            f"<td{cls if size[i] is not None and size[i] == best_size else ''}>"
            f"{_size(run.size_bytes)}</td>"
            f"<td{cls if lat[i] is not None and lat[i] == best_lat else ''}>"
            f"{_fmt(run.latency_ms, '.3f', ' ms')}</td>"
            f"<td{cls if acc[i] is not None and acc[i] == best_acc else ''}>"
            f"{_fmt(100 * f['accuracy'] if 'accuracy' in f else None, '.2f', '%')}</td>"
            f"<td>{_fmt(100 * f[top_key] if top_key in f else None, '.2f', '%')}</td>"
            f"<td>{_fmt(f.get('ece'), '.4f')}</td>"
            f"<td>{_fmt(100 * f['agreement'] if 'agreement' in f else None, '.2f', '%')}</td>"
            f"<td>{_fmt(f.get('kl_teacher_student'), '.4f')}</td>"
            f"<td>{_epochs(run)}</td>"
            f"<td>{_duration(_train_seconds(run))}</td>"
            + (
                f"<td>{''.join(f'<span class=tag>{n}</span>' for n in on) or '—'}</td>"
                if fronts
                else ""
            )
            + "</tr>"
        )
    body = "".join(rows)
    table = f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"
    return f'<div class="table-wrap">{table}</div>'


def _cards(run: RunData) -> str:
    f = run.final
    items = [
        (
            "accuracy",
            _fmt(100 * f["accuracy"] if "accuracy" in f else None, ".2f", "%"),
            f"teacher {100 * f['teacher_accuracy']:.2f}%"
            if "teacher_accuracy" in f
            else "eval split",
        ),
    ]
    if "agreement" in f:
        items.append(
            (
                "teacher agreement",
                _fmt(100 * f["agreement"], ".2f", "%"),
                f"KL(t‖s) {f.get('kl_teacher_student', float('nan')):.4f}",
            )
        )
    items += [
        ("latency", _fmt(run.latency_ms, ".3f", " ms"), "batch 1, CPU"),
        ("size", _size(run.size_bytes), "student.safetensors"),
        (
            "parameters",
            _fmt(_params(run), ",d") if _params(run) is not None else "—",
            e(_student_label(run)),
        ),
    ]
    cells = "".join(
        f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div>'
        f'<div class="s">{s}</div></div>'
        for k, v, s in items
    )
    return f'<div class="cards">{cells}</div>'


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render_report(
    runs: Sequence[RunData],
    notes: Sequence[str] = (),
    threads: int = 1,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    footnotes: Sequence[str] = (),
) -> str:
    """The HTML page of runs already read (and measured).

    ``notes`` (HTML) go in the warning box at the top, ``footnotes`` (text) in the footer.
    """
    try:
        import matplotlib
    except ImportError:
        raise ReportError(
            "crossdistill report draws its figures with matplotlib, which is not installed",
            hint="pip install matplotlib",
        ) from None

    from crossdistill import __version__

    with matplotlib.rc_context(RC):
        return _render(runs, notes, threads, max_examples, __version__, footnotes)


def _render(
    runs: Sequence[RunData],
    notes: Sequence[str],
    threads: int,
    max_examples: int,
    version: str,
    footnotes: Sequence[str] = (),
) -> str:
    parts: list[str] = []
    single = len(runs) == 1
    if single:
        parts.append(_cards(runs[0]))
    all_notes = list(notes) + [
        f"<b>{e(r.name)}</b>: {e(n)}" if not single else e(n) for r in runs for n in r.notes
    ]
    if all_notes:
        items = "".join(f"<li>{n}</li>" for n in all_notes)
        parts.append(f'<div class="notes"><b>Notes</b><ul>{items}</ul></div>')

    # Pareto fronts over the runs that have all three numbers
    ranked = [
        r for r in runs if "accuracy" in r.final and r.latency_ms is not None and r.size_bytes
    ]
    fronts: dict[str, list[bool]] = {}
    pareto_figs = []
    if len(ranked) >= 2:
        for label, costs, xlabel, what in (
            (
                "latency",
                [r.latency_ms or 0.0 for r in ranked],
                "latency (ms, batch 1, CPU)",
                "Accuracy against latency",
            ),
            (
                "size",
                [r.size_bytes / 1024 for r in ranked if r.size_bytes],
                "size of student.safetensors (KiB)",
                "Accuracy against size",
            ),
        ):
            front = pareto_front(
                list(zip(costs, [r.final["accuracy"] for r in ranked], strict=True))
            )
            fronts[label] = [front[ranked.index(r)] if r in ranked else False for r in runs]
            pareto_figs.append(
                _figure_html(
                    what,
                    "Runs with a dark ring are on the Pareto front: no other run is both at "
                    f"least as accurate and at most as costly in {label}.",
                    fig_pareto(ranked, costs, xlabel),
                    f"{what}, Pareto front marked",
                )
            )

    parts.append(
        _section(
            "Summary",
            "Final evaluation of each run on its recipe's eval split (last epoch, as logged by "
            "training). Latency is the median of 50 calls of the student's forward at batch 1 "
            f"on CPU with {threads} thread{'s' if threads != 1 else ''}, the same for every run; "
            "size is student.safetensors on disk."
            + (" Bold: best in its column." if not single else ""),
            _summary_table(runs, fronts),
            "summary",
        )
    )
    if pareto_figs:
        parts.append(
            _section(
                "Accuracy against cost",
                "Each point is one run; the dashed line joins the Pareto front.",
                f'<div class="grid">{"".join(pareto_figs)}</div>',
                "pareto",
            )
        )

    figs = []
    for run in runs:
        if run.of_kind("step"):
            terms = ", ".join(t for t in run.loss_terms if t != "loss")
            figs.append(
                _figure_html(
                    f"Loss terms per step — {run.name}" if not single else "Loss terms per step",
                    e(
                        f"Every logged term ({terms}) and their weighted total, "
                        f"every {_log_every(run)} optimizer steps."
                    ),
                    fig_losses(run),
                    f"loss terms per step of {run.name}",
                )
            )
    with_lr = [r for r in runs if any("lr" in s for s in r.of_kind("step"))]
    if with_lr:
        figs.append(
            _figure_html(
                "Learning rate per step",
                "The schedule as the optimizer applied it; runs on one schedule share a line.",
                fig_lr(with_lr),
                "learning rate per optimizer step",
            )
        )
    if figs:
        parts.append(
            _section("Training", "", f'<div class="grid">{"".join(figs)}</div>', "training")
        )

    evaluated = [r for r in runs if r.of_kind("eval")]
    figs = []
    if evaluated:
        figs.append(
            _figure_html(
                "Validation accuracy per epoch",
                "Top-1 accuracy on the eval split; dashed: the teacher's accuracy.",
                fig_per_epoch(evaluated, "accuracy", "accuracy (%)", True, "teacher_accuracy"),
                "validation accuracy per epoch",
            )
        )
        if any("ece" in r for run in evaluated for r in run.of_kind("eval")):
            figs.append(
                _figure_html(
                    "Calibration per epoch",
                    "Expected calibration error (15 bins); lower is better.",
                    fig_per_epoch(evaluated, "ece", "ECE", False),
                    "expected calibration error per epoch",
                )
            )
    taught = [r for r in evaluated if r.has_teacher]
    if taught:
        figs.append(
            _figure_html(
                "Teacher–student agreement per epoch",
                "Share of eval examples where the student's top-1 class is the teacher's.",
                fig_per_epoch(taught, "agreement", "agreement (%)", True),
                "teacher-student agreement per epoch",
            )
        )
        figs.append(
            _figure_html(
                "KL(teacher ‖ student) per epoch",
                "Mean KL divergence of the student's from the teacher's class distribution "
                "at T = 1, in nats; lower is closer.",
                fig_per_epoch(taught, "kl_teacher_student", "KL (nats)", False),
                "KL divergence teacher to student per epoch",
            )
        )
    if figs:
        parts.append(
            _section("Validation", "", f'<div class="grid">{"".join(figs)}</div>', "validation")
        )

    figs = []
    for run in runs:
        if run.confusion is None:
            continue
        correct = int(np.trace(run.confusion))
        bounded = (
            f"the first {run.cm_examples:,} of {run.cm_total:,} examples"
            if run.cm_examples < run.cm_total
            else f"all {run.cm_examples:,} examples"
        )
        figs.append(
            _figure_html(
                f"Confusion matrix — {run.name}" if not single else "Confusion matrix",
                e(
                    f"The student on {bounded} of its eval split "
                    f"(at most {max_examples:,}, to keep the report fast), on CPU: "
                    f"{100 * correct / max(run.cm_examples, 1):.2f}% correct. "
                    "Cells: % of each true class."
                ),
                fig_confusion(run),
                f"confusion matrix of {run.name}",
            )
        )
    if figs:
        parts.append(
            _section("Confusion", "", f'<div class="grid">{"".join(figs)}</div>', "confusion")
        )

    configs = "".join(
        f"<details{' open' if single else ''}><summary>{_swatch(run)} "
        f"<span class=muted>— {e(str(run.run_dir / 'config.yaml'))}</span></summary>"
        f"<pre>{e(run.config_text)}</pre></details>"
        for run in runs
    )
    parts.append(
        _section(
            "Resolved config",
            "The recipe each run actually used, with every default filled in.",
            configs,
            "config",
        )
    )

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    names = ", ".join(r.name for r in runs)
    meta = "".join(
        f"<span>{e(x)}</span>"
        for x in (
            f"{len(runs)} run{'s' if len(runs) > 1 else ''}"
            if not single
            else str(runs[0].run_dir),
            f"generated {now}",
            f"crossdistill {version}",
            f"torch {torch.__version__}",
            _cpu_name(),
        )
    )
    return PAGE.substitute(
        title=e(f"{names} — crossdistill report"),
        css=CSS,
        heading=e(runs[0].name if single else f"{len(runs)} runs: {names}"),
        meta=meta,
        body="\n".join(parts),
        footer="<br>".join(
            e(line)
            for line in (
                "Made by `crossdistill report` from each run directory's config.yaml, "
                "metrics.jsonl, eval.json and student files. Self-contained: no external assets.",
                *footnotes,
            )
        ),
        script=SCRIPT,
    )


def _log_every(run: RunData) -> Any:
    return (run.config.get("train") or {}).get("log_every", "?")


# ------------------------------------------------------------------------------ entry point


def write_report(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    threads: int = 1,
    tensorboard: bool = True,
) -> Path:
    """Write the HTML report of one or more run directories; returns its path.

    Default output: ``RUN_DIR/report.html`` for one run; several runs need ``out``. The page is
    written to a temporary file and renamed, so a failure leaves no partial report behind.
    """
    if not run_dirs:
        raise ReportError("no run directory given", hint="crossdistill report runs/<name>")
    if max_examples < 1:
        raise ReportError(f"max_examples must be >= 1, got {max_examples}")
    runs = [load_run(d) for d in run_dirs]  # every input is checked before any work
    if out is None:
        if len(runs) > 1:
            raise ReportError(
                "several runs need an output file",
                hint="pass --out report.html (one run defaults to RUN_DIR/report.html)",
            )
        out = runs[0].run_dir / "report.html"
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"--out {out} is a folder", hint="give a file name like report.html")
    _distinct_names(runs)
    footnotes: list[str] = []
    for i, run in enumerate(runs):
        run.color = RUN_COLORS[i % len(RUN_COLORS)]
        measure(run, max_examples, threads)
        if tensorboard:
            tb = write_tensorboard(run)
            if tb not in footnotes:
                footnotes.append(tb)
    page = render_report(runs, (), threads, max_examples, footnotes)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
    "pareto_front",
    "read_metrics",
    "render_report",
    "write_report",
]
