"""Helpers shared by the benchmark scripts: the runs over seeds, the machine, the command, the
result files.

A benchmark that compares recipes lists them as ``Variant``s and calls ``run_variants``, which
trains (or reuses) each variant at each seed and hands every finished run to the script's reader;
``mean_std`` and ``format_mean_std`` turn the per-seed values into numbers and table cells.
It then builds a JSON-able ``result`` dict (including ``command_line()`` and ``machine()``),
a markdown table and a line of notes, and calls ``write_results(name, result, table, notes)``,
which writes ``benchmarks/results/<name>.json`` and ``<name>.md``. Scripts give quick runs a
distinct name (``<name>.quick``) so that a quick run never overwrites a full result.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crossdistill._util.files import write_atomic

if TYPE_CHECKING:  # imported when used: text.py sets thread counts before torch loads
    from crossdistill.config import Recipe
    from crossdistill.runs import Run

RESULTS = Path(__file__).resolve().parent / "results"
# crossdistill child processes: one intra-op thread, offline, lines not wrapped by rich
CHILD_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "COLUMNS": "400",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def command_line() -> str:
    """The command line this process was started with, interpreter included, shell-quoted."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    """CPU model, core counts, load, and the Python / torch versions and thread count."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - every benchmark here needs torch
        info["torch"] = None
    return info


def std(values: Sequence[float]) -> float:
    """The sample standard deviation; 0.0 for a single value (one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0.0 for one seed) of per-seed values."""
    return statistics.mean(values), std(values)


def format_mean_std(mean: float, std: float | None = None, digits: int = 4) -> str:
    """A table cell: ``mean ± std``, or ``mean`` alone when ``std`` is None."""
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


# ----------------------------------------------------------------------------- runs over seeds


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison: its label (also in its run names), recipe file and overrides."""

    label: str
    recipe: Path
    overrides: Sequence[str] = ()


@dataclass(frozen=True)
class Trial:
    """A finished run of one variant at one seed, as ``run_variants`` hands it to the reader."""

    label: str
    seed: int
    recipe: Recipe
    run: Run
    seconds: float  # in run_or_reuse: the training, or next to nothing when the run is reused


def run_variants(
    variants: Sequence[Variant],
    seeds: Sequence[int],
    read: Callable[[Trial], Mapping[str, Any]],
    *,
    common: Sequence[str] = (),
    prefix: str = "",
    outer: Literal["seed", "variant"] = "seed",
    prepare: Callable[[Recipe], object] | None = None,
    failed: Callable[[str, int, Exception], bool] | None = None,
) -> dict[str, dict[str, list[Any]]]:
    """Train (or reuse) every variant at every seed; ``{label: {metric: [value per seed]}}``.

    The run of a variant at a seed is named ``<prefix><label>_seed<seed>`` and made by its recipe
    with the overrides ``common``, the variant's, ``seed=`` and ``name=``, in that order, so a
    finished run of the same recipe is reused. ``outer`` is the outer loop: every variant of a
    seed before the next seed, or every seed of a variant before the next variant.
    ``prepare(recipe)`` runs before each training (writing a store, say). ``read`` gets each
    run as soon as it is ready (print its progress line there) and returns its metrics by name.
    When training raises and ``failed(label, seed, error)`` returns True, that run is left out
    (a diverged loss is a result too) and the others go on; otherwise the error propagates.
    """
    from crossdistill import pipeline
    from crossdistill.config import load_recipe
    from crossdistill.runs import Run

    if outer == "seed":
        order = [(variant, seed) for seed in seeds for variant in variants]
    else:
        order = [(variant, seed) for variant in variants for seed in seeds]
    found: dict[str, dict[str, list[Any]]] = {variant.label: {} for variant in variants}
    for variant, seed in order:
        recipe = load_recipe(
            variant.recipe,
            [
                *common,
                *variant.overrides,
                f"seed={seed}",
                f"name={prefix}{variant.label}_seed{seed}",
            ],
        )
        if prepare is not None:
            prepare(recipe)
        start = time.perf_counter()
        try:
            run_dir = pipeline.run_or_reuse(recipe)
        except Exception as error:
            if failed is not None and failed(variant.label, seed, error):
                continue
            raise
        trial = Trial(variant.label, seed, recipe, Run(run_dir), time.perf_counter() - start)
        for metric, value in read(trial).items():
            found[variant.label].setdefault(metric, []).append(value)
    return found


def summarize(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles (linear interpolation, as numpy's default) and min of timings, in ms."""
    ms = sorted(1000.0 * s for s in seconds)
    if len(ms) > 1:
        p25, _, p75 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        p25 = p75 = ms[0]
    return {
        "median_ms": round(statistics.median(ms), 4),
        "p25_ms": round(p25, 4),
        "p75_ms": round(p75, 4),
        "min_ms": round(ms[0], 4),
        "n": len(ms),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; the first column left-aligned, the others right-aligned."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_markdown(name: str, result: dict[str, Any], table: str, notes: str = "") -> str:
    """The markdown page of a result: the table, the notes, the machine and the command."""
    parts = [f"# {name}", table]
    if notes:
        parts.append(notes)
    m = result.get("machine")
    if isinstance(m, dict):
        parts.append("Machine: " + ", ".join(f"{k} {v}" for k, v in m.items() if v is not None))
    elif m is not None:
        parts.append(f"Machine: {m}")
    if "command" in result:
        parts.append(f"Command: `{result['command']}`")
    return "\n\n".join(parts) + "\n"


def provenance(began: float) -> dict[str, Any]:
    """The closing keys of every result: seconds since ``began`` (a ``time.perf_counter()``),
    the processes sharing the cores, the machine and the command line."""
    return {
        "total_s": round(time.perf_counter() - began, 1),
        "neighbours": neighbours(),
        "machine": machine(),
        "command": command_line(),
    }


def write_results(name: str, result: dict[str, Any], table: str, notes: str = "") -> str:
    """Write ``results/<name>.json`` (``result``) and ``results/<name>.md``, each atomically;
    return the markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    markdown = results_markdown(name, result, table, notes)
    write_atomic(RESULTS / f"{name}.json", json.dumps(result, indent=2) + "\n")
    write_atomic(RESULTS / f"{name}.md", markdown)
    return markdown


def neighbours() -> list[str]:
    """Other benchmark and test processes running now (shortened command lines): they share
    the cores with the running benchmark."""
    me = Path(sys.argv[0]).name
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in (os.getpid(), os.getppid()):
            continue
        try:
            argv = [
                a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:
            continue
        line = " ".join(a for a in argv if a)
        if ("benchmarks/" in line or "pytest" in line) and me not in line:
            found.add(line[:120])
    return sorted(found)


class EpochBatches:
    """Batches of a crossdistill ``EpochLoader``, epoch after epoch (``set_epoch`` at each
    start): ``next()`` never runs out."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.epoch = loader, 0
        self._it = self._start()

    def _start(self) -> Iterator[Any]:
        self.loader.set_epoch(self.epoch)
        return iter(self.loader)

    def next(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self._it = self._start()
            return next(self._it)
