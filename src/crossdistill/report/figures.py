"""The report's figures, each returned as a base64 PNG.

Drawn with matplotlib's Agg renderer through ``matplotlib.figure.Figure``, never pyplot, so nothing
global changes; :data:`RC` is applied by the caller with ``matplotlib.rc_context``.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from crossdistill.report.data import RunData

# Loss terms get their own palette (muted "colorblind"), the total is drawn in ink.
TERM_COLORS = ["#0173B2", "#DE8F05", "#029E73", "#D55E00", "#CC78BC", "#CA9161", "#56B4E9"]
TOTAL_COLOR = "#2B2F36"

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
