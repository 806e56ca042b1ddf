"""The bring-your-own examples (examples/*), each run as its README describes: a teacher and data
that no crossdistill source or model ships, and the same student with and without the teacher.

    python benchmarks/examples.py                    # every example, seeds 0 1 2, full size
    python benchmarks/examples.py --quick            # every example tiny, seed 0 (a smoke run)
    python benchmarks/examples.py --only sensors     # one example

Each example's own ``benchmark(tiny, seeds, out)`` does the work (its runs land under
``--out/<example>``, emptied first) and its ``table(result)`` renders its numbers; this script
collects them into benchmarks/results/examples[.quick].json (``{"examples": {name: result}}``,
each result with its per-seed values, mean ± std and seconds) and .md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import command_line, machine, write_results  # noqa: E402

EXAMPLES = HERE.parent / "examples"


def available() -> list[str]:
    """Examples with a ``<name>/<name>.py`` script."""
    return sorted(p.parent.name for p in EXAMPLES.glob("*/*.py") if p.stem == p.parent.name)


def run_example(name: str, quick: bool, seeds: list[int], out: Path) -> tuple[dict, str, float]:
    """Import examples/<name>/<name>.py (its folder on sys.path, as when it runs as a script) and
    run its benchmark; returns (result, markdown table, seconds)."""
    folder = str(EXAMPLES / name)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.import_module(name)
    if out.exists():  # the benchmark's own scratch folder: runs are never overwritten in place
        shutil.rmtree(out)
    began = time.perf_counter()
    result = module.benchmark(quick, seeds, out)
    return result, module.table(result), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each example tiny, seed 0")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument("--only", nargs="+", choices=available(), default=None)
    parser.add_argument("--out", type=Path, default=None, help="runs (runs/bench-examples)")
    # The examples' models are small: one thread is faster on a shared 2-core machine, and is
    # what their READMEs' numbers were made with.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    out = args.out or Path("runs") / ("bench-examples" + ("-quick" if args.quick else ""))
    results: dict[str, Any] = {}
    tables = []
    for name in args.only or available():
        print(f"== {name}", flush=True)
        result, table, seconds = run_example(name, args.quick, seeds, out / name)
        results[name] = {**result, "seconds": round(seconds, 1)}
        tables.append(f"### {name} ({seconds / 60:.1f} min)\n\n{table.strip()}\n")
    result = {
        "command": command_line(),
        "machine": machine(),
        "quick": args.quick,
        "seeds": seeds,
        "torch_threads": args.threads,
        "examples": results,
    }
    notes = (
        "Each example's README explains its data, teacher, student and metrics. Last epoch, "
        "test split, mean ± std over the seeds."
    )
    name = "examples" + (".quick" if args.quick else "")
    print(write_results(name, result, "\n".join(tables), notes))


if __name__ == "__main__":
    main()
