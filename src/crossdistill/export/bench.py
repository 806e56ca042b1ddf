"""Benchmark a run's teacher, its student and every export side by side, in one process.

For each candidate: p50/p95 latency at batch 1 (ms), throughput at batch 64 (examples/s),
parameters, size on disk (MB), peak memory, and on real evaluation examples its accuracy, its
top-1 agreement with the trained student and its max abs diff from the student's outputs.

All candidates run with the same intra-op thread count (torch and onnxruntime alike). Peak
memory is the increase of the process's peak resident set size (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` before each candidate) over its RSS just before the candidate is
loaded, while loading it and running batch 64; torch and onnxruntime are imported beforehand, so
library code is not counted; memory the allocator keeps from earlier candidates can be reused,
so the figure is a lower bound. ``None`` where /proc is not available.

``bench.json`` is the run's one latency measurement: ``crossdistill report`` shows its numbers
(and measures them with :func:`bench` when the file is missing or older than the student). It
records its sample size (calls, batches, batch sizes, threads, examples), when it was measured
and on which machine; :func:`sample_size` says it in words, for every table that shows it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdistill._util.files import write_json
from crossdistill.config import WeightsSpec
from crossdistill.errors import CheckpointError
from crossdistill.evaluate.latency import call_times
from crossdistill.export.base import EXPORTERS, Runner, torch_runner
from crossdistill.export.export import PARITY, PREPROCESSING
from crossdistill.registry import untrusted
from crossdistill.runs import Run


@dataclass
class Candidate:
    """One model to benchmark: how to load it (a runner), its files and parameter count."""

    name: str
    kind: str  # teacher | student | export
    load: Callable[[], Runner]
    files: list[Path]
    params: int | None
    view: str = "student"  # which input view it reads


# ----------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM)
        return True
    except OSError:
        return False


def machine() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``) and the OS, for a measurement's record."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {platform.system()} {platform.release()}"


# ----------------------------------------------------------------------------- timing

WARMUP = 5
B1, B64 = 1, 64  # the batch sizes of latency and of throughput


def measure(
    runner: Runner,
    x1: np.ndarray,
    x64: np.ndarray,
    repeats: int,
    batches: int,
    warmup: int = WARMUP,
) -> dict[str, float]:
    """p50/p95 ms at batch 1 over ``repeats`` calls; examples/s over ``batches`` batches."""
    times = call_times(lambda: runner(x1), repeats, warmup)
    runner(x64)
    start = time.perf_counter()
    for _ in range(batches):
        runner(x64)
    elapsed = time.perf_counter() - start
    ms = [1000 * t for t in times]
    return {
        "p50_ms_b1": round(statistics.median(ms), 4),
        "p95_ms_b1": round(float(np.percentile(ms, 95)), 4),
        "throughput_b64": round(batches * len(x64) / elapsed, 1),
    }


def _outputs(runner: Runner, x: np.ndarray) -> np.ndarray:
    return np.concatenate([runner(x[i : i + 256])[0] for i in range(0, len(x), 256)])


# ----------------------------------------------------------------------------- candidates


def _wrapper_runner(wrapper: torch.nn.Module, threads: int) -> Runner:
    """A crossdistill Student/Teacher (pipeline inside) as a runner of its first output."""
    wrapper.eval()
    first = (
        wrapper.outputs[0] if not isinstance(wrapper.outputs, dict) else next(iter(wrapper.outputs))
    )
    return torch_runner(lambda x: wrapper(x)[first], threads)


def _preprocessing(folder: Path) -> dict[str, Any]:
    """An export's preprocessing.json; a CheckpointError when it is not a JSON object with a
    ``format``."""
    path = folder / PREPROCESSING
    try:
        pre = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        pre = exc
    if not isinstance(pre, dict) or not isinstance(pre.get("format"), str):
        why = f": {pre}" if isinstance(pre, Exception) else " (no `format` string)"
        raise CheckpointError(
            f"{path} does not describe an export{why}",
            hint="export the run again with `crossdistill export RUN_DIR --format FORMAT`",
        )
    return pre


def _export_candidate(
    folder: Path, threads: int, params: int | None, allow: tuple[str, ...] = ()
) -> Candidate:
    """An export folder (data: what its files name is built as :func:`untrusted` says)."""
    pre = _preprocessing(folder)
    with untrusted(folder / PREPROCESSING, allow):
        exporter = EXPORTERS.build(pre["format"], where=f"{folder / PREPROCESSING}: format")
    files = [p for p in folder.iterdir() if p.name not in (PREPROCESSING, PARITY)]
    student = pre.get("student")
    if params is None and isinstance(student, dict) and isinstance(student.get("parameters"), int):
        params = student["parameters"]

    def load() -> Runner:
        with untrusted(folder, allow):
            return exporter.load(folder, threads)

    return Candidate(folder.name, "export", load, files, params)


def run_candidates(run: Run, threads: int) -> list[Candidate]:
    """Teacher (if the run has one), student and every export of a finished run."""
    recipe = run.config
    meta = run.student_meta()
    out: list[Candidate] = []
    teacher = run.teacher()
    if teacher is not None:
        assert recipe.teacher is not None
        specs = recipe.teacher.members or [recipe.teacher]
        weights = [
            s.weights.path if isinstance(s.weights, WeightsSpec) else Path(s.weights)
            for s in specs
            if s.weights is not None
        ]
        out.append(
            Candidate(
                "teacher",
                "teacher",
                lambda: _wrapper_runner(teacher, threads),
                weights,
                sum(p.numel() for p in teacher.parameters()),
                view="teacher",
            )
        )
    out.append(
        Candidate(
            "student",
            "student",
            lambda: _wrapper_runner(run.student(), threads),
            [run.student_file],
            meta.get("parameters"),
        )
    )
    if run.exports.is_dir():
        for folder in sorted(run.exports.iterdir()):
            if folder.is_dir() and (folder / PREPROCESSING).is_file():
                candidate = _export_candidate(
                    folder, threads, meta.get("parameters"), run.allow_import
                )
                out.append(candidate)
    return out


def _eval_views(run: Run, limit: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    views: dict[str, list[torch.Tensor]] = {}
    targets = []
    for batch in run.eval_data(limit=limit):
        for name, x in batch["views"].items():
            views.setdefault(name, []).append(x)
        targets.append(batch["target"])
    return (
        {k: torch.cat(v)[:limit].numpy() for k, v in views.items()},
        torch.cat(targets)[:limit].numpy(),
    )


# ----------------------------------------------------------------------------- bench


def bench(
    path: str | Path,
    threads: int = 1,
    repeats: int = 200,
    batches: int = 20,
    examples: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Benchmark a run directory (teacher, student, exports) or one export folder.

    A run directory's results are also written to ``RUN_DIR/bench.json``.
    """
    from rich.progress import Progress

    # Imported before any memory is measured; only an ONNX export needs it (and says so).
    with contextlib.suppress(ImportError):
        import onnxruntime  # noqa: F401

    path = Path(path)
    is_run = Run(path).exists
    if is_run:
        run = Run.open(path)
        candidates = run_candidates(run, threads)
        views, targets = _eval_views(run, examples)
    elif (path / PREPROCESSING).is_file():
        candidates = [_export_candidate(path, threads, None)]
        shape = _preprocessing(path)["input"]["shape"][1:]
        rng = np.random.default_rng(0)  # no labelled data here: inputs in [0, 1]
        views = {"student": rng.random((64, *shape), dtype=np.float32)}
        targets = None
    else:
        raise CheckpointError(
            f"{path} is neither a run directory (config.yaml) nor an export folder "
            f"({PREPROCESSING})",
            hint="pass RUN_DIR or RUN_DIR/export/<format>",
        )

    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, np.ndarray] = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("benchmarking", total=len(candidates))
            for cand in candidates:
                bar.update(task, description=f"benchmarking {cand.name}")
                x = views.get(cand.view, views["student"])
                gc.collect()
                rss0 = _status_kb("VmRSS")
                reset = _reset_peak()
                runner = cand.load()
                row = measure(runner, x[:B1], x[:B64], repeats, batches)
                peak = _status_kb("VmHWM")
                row["peak_mem_mb"] = (
                    round(max(peak - rss0, 0) / 1024, 2) if reset and peak and rss0 else None
                )
                row["params"] = cand.params
                row["size_mb"] = round(sum(f.stat().st_size for f in cand.files) / 2**20, 4)
                outputs[cand.name] = _outputs(runner, x)
                if targets is not None:
                    row["accuracy"] = round(
                        float((outputs[cand.name].argmax(1) == targets).mean()), 4
                    )
                results[cand.name] = row
                del runner
                bar.advance(task)
    finally:
        torch.set_num_threads(previous)
    student = next((c.name for c in candidates if c.kind == "student"), None)
    for cand in candidates if student is not None else []:
        out, ref = outputs[cand.name], outputs[student]
        results[cand.name]["top1_agreement"] = round(
            float((out.argmax(1) == ref.argmax(1)).mean()), 4
        )
        results[cand.name]["max_abs_diff"] = (
            None if cand.kind == "teacher" else float(np.abs(out - ref).max())
        )
    report = {
        "path": str(path),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": threads,
        "repeats_b1": repeats,
        "warmup_b1": WARMUP,
        "batches_b64": batches,
        "batch_size_throughput": B64,
        "examples": len(next(iter(views.values()))),
        "memory": "peak RSS increase (VmHWM) while loading + running batch 64, MB",
        "agreement_with": "the trained student (crossdistill, float32) on the same examples",
        "results": results,
    }
    if is_run:
        write_json(Run(path).bench_file, report)
    return report


def sample_size(report: dict[str, Any]) -> str:
    """What a :func:`bench` result's numbers stand on, in words (for every table showing them)."""
    threads = report.get("threads", "?")
    text = (
        f"latency: median/p95 of {report.get('repeats_b1', '?')} calls at batch {B1} "
        f"(after {report.get('warmup_b1', WARMUP)} warm-up calls); throughput: "
        f"{report.get('batches_b64', '?')} batches of {report.get('batch_size_throughput', B64)}; "
        f"{threads} thread{'s' * (threads != 1)}"
    )
    if report.get("examples") is not None:
        text += f"; accuracy and agreement on {report['examples']} eval examples"
    when = ", ".join(str(report[k]) for k in ("measured_at", "machine") if report.get(k))
    return text + (f"; measured {when}" if when else "")


def read_bench(run: Run) -> dict[str, Any] | None:
    """The run's ``bench.json`` when it holds the student's latency and is not older than the
    student's weights (a run trained again after ``bench``); ``None`` otherwise."""
    path = run.bench_file
    try:
        if path.stat().st_mtime < run.student_file.stat().st_mtime:
            return None
        found = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(found, dict) or not isinstance(found.get("results"), dict):
        return None
    student = found["results"].get("student")
    if not isinstance(student, dict) or not isinstance(student.get("p50_ms_b1"), (int, float)):
        return None
    return found


def student_bench(run_dir: str | Path, threads: int = 1) -> tuple[dict[str, Any], bool]:
    """The run's one latency measurement: ``bench.json`` as :func:`read_bench` accepts it, or
    :func:`bench` run now (which writes it). Returns it and whether it was read.

    Raises a :class:`~crossdistill.errors.CrossDistillError` when it cannot be measured."""
    found = read_bench(Run.open(run_dir))
    if found is not None:
        return found, True
    return bench(run_dir, threads=threads, progress=False), False
