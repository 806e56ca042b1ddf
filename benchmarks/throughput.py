"""Teacher passes, store reads, compiled steps and exports at hardware speed (issue 24).

    python benchmarks/throughput.py                  # every part, full size
    python benchmarks/throughput.py --quick          # small (results/throughput.quick.*)
    python benchmarks/throughput.py --parts store    # some parts (the others kept from the file)

Each part lives in ``benchmarks/throughput_parts/<part>.py`` and measures its ratios side by side
in one run (interleaved repeats, medians); this script runs the parts one after another, so that
no two parts share the cores, and writes one result:

- ``runtime``: teacher passes through ONNX Runtime vs PyTorch / sentence-transformers;
- ``store``: loading a top-k store batch vs a dense one, loading vs the training step with workers;
- ``compile``: a training step with ``train.compile`` vs eager, on CPU;
- ``export``: ONNX export time of a small student, a model2vec-format static student's encode speed
  vs model2vec's own model.

Running only some parts keeps the other parts' last results from the existing file (their
``measured_at`` says when each part ran). Where the machine has no GPU the notes say that no GPU
timings were taken.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, command_line, markdown_table, provenance, write_results

PARTS = ("runtime", "store", "compile", "export")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a separate result")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args()
    name = "throughput.quick" if args.quick else "throughput"
    began = time.perf_counter()

    previous = RESULTS / f"{name}.json"
    parts: dict[str, Any] = json.loads(previous.read_text())["parts"] if previous.exists() else {}
    for part in args.parts:
        module = importlib.import_module(f"throughput_parts.{part}")
        print(f"throughput: {part} ...", flush=True)
        started = time.perf_counter()
        measured = module.measure(args.quick)
        parts[part] = {
            **measured,
            "seconds": round(time.perf_counter() - started, 1),
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command_line(),
        }

    ordered = {p: parts[p] for p in PARTS if p in parts}
    rows = [row for p in ordered.values() for row in p["rows"]]
    table = markdown_table(["measure", "measured", "target", "met"], rows)
    notes = [note for p in ordered.values() for note in p.get("notes", [])]
    notes += [
        f"{name}: measured {p['measured_at']} by `{p['command']}`" for name, p in ordered.items()
    ]
    if not result_has_gpu():
        notes.append("no GPU on this machine: no GPU timings (AMP, compile, teacher pass) taken")
    result = {"quick": args.quick, "parts": ordered, **provenance(began)}
    print(write_results(name, result, table, "\n".join(f"- {n}" for n in notes)))


def result_has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
