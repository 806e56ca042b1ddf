"""The report's HTML: template, formatting helpers, summary table and one helper per section.

The page embeds every figure as a base64 PNG, needs no network and no JavaScript. A three-line
script only records, in ``<html data-images="ok/total">``, how many images decoded: the
headless-browser test reads it back.
"""

from __future__ import annotations

import html
import math
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import torch

from crossdistill.export.bench import sample_size
from crossdistill.report.data import STEP_META, RunData
from crossdistill.report.figures import (
    fig_confusion,
    fig_losses,
    fig_lr,
    fig_pareto,
    fig_per_epoch,
    pareto_front,
)
from crossdistill.runs import Run

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
.samples { color: var(--muted); font-size: 13px; margin: 8px 0 0; padding-left: 18px; }
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
        "<tr><th>Run</th><th>Student</th><th>Params</th><th>Size</th><th>Latency (p50, b1)</th>"
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
            else f"split {run.final_split}"
            if run.final_split
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
        ("latency", _fmt(run.latency_ms, ".3f", " ms"), "p50, batch 1, CPU (bench.json)"),
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


def render_page(
    runs: Sequence[RunData],
    notes: Sequence[str],
    threads: int,
    max_examples: int,
    version: str,
    footnotes: Sequence[str] = (),
    sections: Sequence[str] = (),
) -> str:
    """The whole page, section by section; call it inside ``matplotlib.rc_context(RC)``.
    ``sections``: more HTML sections, after the summary (a tuning study's)."""
    fronts, pareto = _pareto_section(runs)  # the summary table marks the Pareto fronts
    parts = [
        *_header_parts(runs, notes),
        _summary_section(runs, fronts, threads),
        *sections,
        pareto,
        _training_section(runs),
        _validation_section(runs),
        _confusion_section(runs, max_examples),
        _per_class_section(runs),
        _config_section(runs),
    ]
    return _page(runs, [p for p in parts if p], version, footnotes)


def _grid(figs: Sequence[str]) -> str:
    return f'<div class="grid">{"".join(figs)}</div>'


def _header_parts(runs: Sequence[RunData], notes: Sequence[str]) -> list[str]:
    """The cards of a single run and the notes box (``notes`` HTML, the runs' own notes text)."""
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
    return parts


def _pareto_section(runs: Sequence[RunData]) -> tuple[dict[str, list[bool]], str]:
    """Pareto fronts (per cost, per run) over the runs with all three numbers, and their section."""
    ranked = [
        r for r in runs if "accuracy" in r.final and r.latency_ms is not None and r.size_bytes
    ]
    fronts: dict[str, list[bool]] = {}
    if len(ranked) < 2:
        return fronts, ""
    figs = []
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
        front = pareto_front(list(zip(costs, [r.final["accuracy"] for r in ranked], strict=True)))
        fronts[label] = [front[ranked.index(r)] if r in ranked else False for r in runs]
        figs.append(
            _figure_html(
                what,
                "Runs with a dark ring are on the Pareto front: no other run is both at "
                f"least as accurate and at most as costly in {label}.",
                fig_pareto(ranked, costs, xlabel),
                f"{what}, Pareto front marked",
            )
        )
    section = _section(
        "Accuracy against cost",
        "Each point is one run; the dashed line joins the Pareto front.",
        _grid(figs),
        "pareto",
    )
    return fronts, section


def _summary_section(runs: Sequence[RunData], fronts: dict[str, list[bool]], threads: int) -> str:
    return _section(
        "Summary",
        "Final evaluation of each run on its recipe's eval split (last epoch, as logged by "
        "training). Latency is the student's median at batch 1 on CPU, input pipeline "
        "included: the run's one measurement, <code>bench.json</code> (<code>crossdistill "
        "bench RUN</code>), read when present, otherwise measured now with "
        f"{threads} thread{'s' if threads != 1 else ''} and written; "
        "size is student.safetensors on disk."
        + (" Bold: best in its column." if len(runs) != 1 else ""),
        _summary_table(runs, fronts) + _latency_samples(runs),
        "summary",
    )


def _latency_samples(runs: Sequence[RunData]) -> str:
    """Under the summary table: where each run's latency comes from and its sample size."""
    items = []
    for run in runs:
        if run.bench is None:
            source = "latency not measured — run <code>crossdistill bench RUN</code>"
        else:
            where = e(str(Run(run.run_dir).bench_file))
            how = "read from" if run.bench_read else "measured for this report, written to"
            source = f"{how} <code>{where}</code>: {e(sample_size(run.bench))}"
        items.append(f"<li>{_swatch(run)}: {source}</li>")
    return f'<ul class="samples">{"".join(items)}</ul>'


def _training_section(runs: Sequence[RunData]) -> str:
    """Loss terms per step of each run and the learning rate schedules."""
    single = len(runs) == 1
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
    return _section("Training", "", _grid(figs), "training") if figs else ""


def _splits_of(runs: Sequence[RunData]) -> str:
    """The split(s) the runs evaluated each epoch, for a caption."""
    names = sorted({r.eval_split for r in runs if r.eval_split})
    if not names:
        return "the eval split"
    return f"the {' / '.join(names)} split" + ("s" if len(names) > 1 else "")


def _validation_section(runs: Sequence[RunData]) -> str:
    """Per-epoch accuracy and calibration, and agreement with the teacher where there is one."""
    evaluated = [r for r in runs if r.of_kind("eval")]
    figs = []
    if evaluated:
        figs.append(
            _figure_html(
                "Validation accuracy per epoch",
                f"Top-1 accuracy on {_splits_of(evaluated)}; dashed: the teacher's accuracy.",
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
    return _section("Validation", "", _grid(figs), "validation") if figs else ""


def _confusion_section(runs: Sequence[RunData], max_examples: int) -> str:
    single = len(runs) == 1
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
    return _section("Confusion", "", _grid(figs), "confusion") if figs else ""


def _per_class_section(runs: Sequence[RunData]) -> str:
    """Precision, recall, F1 and support of every class at the end (eval.json): where a rare
    class pays for a gain in accuracy, macro-F1 falls and this table shows which."""
    tables = []
    for run in (r for r in runs if r.per_class):
        rows = "".join(
            f"<tr><td>{e(name)}</td><td>{_fmt(row.get('precision'), '.4f')}</td>"
            f"<td>{_fmt(row.get('recall'), '.4f')}</td><td>{_fmt(row.get('f1'), '.4f')}</td>"
            f"<td>{int(row.get('support', 0)):,}</td></tr>"
            for name, row in run.per_class.items()
        )
        macro = _fmt(run.final.get("macro_f1"), ".4f")
        tables.append(
            f"<h3>{_swatch(run)} <span class=muted>macro-F1 {macro}</span></h3>"
            "<table><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
            f"<th>support</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    lede = "The last evaluation of each run, class by class (its eval.json)."
    return _section("Per class", lede, "".join(tables), "per-class") if tables else ""


def _adapters(run: RunData) -> str:
    """The adapters ``auto`` chose, as the run logged them."""
    chosen = {k: v for r in run.of_kind("adapters") for k, v in r.items() if k not in STEP_META}
    if not chosen:
        return ""
    listed = ", ".join(f"{e(term)} → {e(str(name))}" for term, name in chosen.items())
    return f"<p>adapters chosen by <code>auto</code>: {listed}</p>"


def _config_section(runs: Sequence[RunData]) -> str:
    configs = "".join(
        f"<details{' open' if len(runs) == 1 else ''}><summary>{_swatch(run)} "
        f"<span class=muted>— {e(str(Run(run.run_dir).config_file))}</span></summary>"
        f"{_adapters(run)}<pre>{e(run.config_text)}</pre></details>"
        for run in runs
    )
    return _section(
        "Resolved config",
        "The recipe each run actually used, with every default filled in.",
        configs,
        "config",
    )


def _page(
    runs: Sequence[RunData], parts: Sequence[str], version: str, footnotes: Sequence[str]
) -> str:
    """The page around the sections: title, heading, the meta line and the footer."""
    single = len(runs) == 1
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
        footer=_footer(footnotes),
        script=SCRIPT,
    )


def _footer(footnotes: Sequence[str]) -> str:
    return "<br>".join(
        e(line)
        for line in (
            "Made by `crossdistill report` from each run directory's config.yaml, "
            "metrics.jsonl, eval.json and student files. Self-contained: no external assets.",
            *footnotes,
        )
    )


def _log_every(run: RunData) -> Any:
    return (run.config.get("train") or {}).get("log_every", "?")
