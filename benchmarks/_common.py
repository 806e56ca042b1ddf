"""Helpers shared by the benchmark scripts: the machine, the command, the result files.

A benchmark builds a JSON-able ``result`` dict (including ``command_line()`` and ``machine()``),
a markdown table and a line of notes, then calls ``write_results(name, result, table, notes)``,
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


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


def write_results(name: str, result: dict[str, Any], table: str, notes: str = "") -> str:
    """Write ``results/<name>.json`` (``result``) and ``results/<name>.md``; return the markdown.

    The markdown is the table, the notes, and the machine and command found in ``result``.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
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
    markdown = "\n\n".join(parts) + "\n"
    (RESULTS / f"{name}.md").write_text(markdown)
    return markdown
