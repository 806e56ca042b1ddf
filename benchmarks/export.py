"""Ship the student: every export format of the Fashion-MNIST KD student next to its teacher.

The run is ``runs/bench/fashion_mnist_kd_seed0`` (recipes/fashion_mnist/kd.yaml, seed 0, as
benchmarks/fashion_mnist.py trains it; trained here if missing). The student is exported as
safetensors, TorchScript and ONNX, float and int8; each export's parity with the trained student
is measured at export time on the first 1000 test images; then ``crossdistill.export.bench``
times the teacher, the student and every export side by side in this one process, one intra-op
thread each (torch and onnxruntime alike).

    python benchmarks/export.py            # 200 batch-1 calls, 50 batch-64 calls per model
    python benchmarks/export.py --quick    # 30 and 5

Writes benchmarks/results/export[.quick].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import command_line, machine, markdown_table, write_results  # noqa: E402
from crossdistill import load_recipe  # noqa: E402
from crossdistill.export import export_run  # noqa: E402
from crossdistill.export.bench import bench  # noqa: E402
from crossdistill.pipeline import run_or_reuse  # noqa: E402
from crossdistill.runs import Run  # noqa: E402

RECIPES = HERE.parent / "recipes" / "fashion_mnist"
FORMATS = [(f, i) for f in ("safetensors", "torchscript", "onnx") for i in (False, True)]
KEYS = ("p50_ms_b1", "p95_ms_b1", "throughput_b64", "size_mb", "params", "peak_mem_mb")


def kd_run(out: str) -> Path:
    """The seed-0 KD run of benchmarks/fashion_mnist.py (reused when it exists)."""
    common = [f"output.dir={out}", "train.progress=false"]
    teacher = Run(run_or_reuse(load_recipe(RECIPES / "teacher.yaml", common)))
    recipe = load_recipe(
        RECIPES / "kd.yaml",
        [
            *common,
            f"teacher.weights={teacher.student_file}",
            "seed=0",
            "name=fashion_mnist_kd_seed0",
        ],
    )
    return run_or_reuse(recipe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed calls")
    parser.add_argument("--out", default="runs/bench", help="run directories (runs/bench)")
    args = parser.parse_args()
    os.chdir(HERE.parent)  # the recipes' relative weight paths are relative to the repo root
    repeats, batches = (30, 5) if args.quick else (200, 50)

    run_dir = kd_run(args.out)
    parity = {}
    for fmt, int8 in FORMATS:
        folder = export_run(run_dir, fmt, int8=int8)
        parity[folder.name] = json.loads((folder / "parity.json").read_text())
        print(f"exported {folder}: agreement {parity[folder.name]['top1_agreement']:.4f}")
    report = bench(run_dir, threads=1, repeats=repeats, batches=batches, progress=False)

    results = {}
    for name, row in report["results"].items():
        key = name.replace("-", "_")
        entry = {k: row.get(k) for k in KEYS}
        entry["accuracy"] = row.get("accuracy")
        if name in parity:  # the export-time check: exported runtime vs trained student
            entry["top1_agreement"] = parity[name]["top1_agreement"]
            entry["max_abs_diff"] = parity[name]["max_abs_diff_all"]
        else:  # teacher: agreement of the student with it; student: itself
            entry["top1_agreement"] = row.get("top1_agreement")
            entry["max_abs_diff"] = row.get("max_abs_diff")
        results[key] = entry
    teacher = results["teacher"]
    for entry in results.values():
        entry["speedup_p50_vs_teacher"] = round(teacher["p50_ms_b1"] / entry["p50_ms_b1"], 2)

    result = {
        "benchmark": "export",
        "run": str(run_dir),
        "recipe": "recipes/fashion_mnist/kd.yaml (seed 0, 15 epochs, last epoch)",
        "threads": 1,
        "repeats_b1": repeats,
        "batches_b64": batches,
        "parity_examples": next(iter(parity.values()))["examples"],
        "bench_examples": report["examples"],
        "memory": report["memory"],
        "agreement": "exports: top-1 agreement with the trained student (crossdistill) on the "
        "first 1000 test images, measured at export time; teacher: the student's agreement "
        "with the teacher on the same images",
        "int8": {
            name: json.loads((Run(run_dir).exports / name / "preprocessing.json").read_text())[
                "quantization"
            ]
            for name in parity
            if name.endswith("-int8")
        },
        "results": results,
        "quick": args.quick,
        "command": command_line(),
        "machine": machine(),
    }
    headers = ["model", "p50 ms b1", "p95 ms b1", "ex/s b64", "MB", "params", "peak MB", "acc"]
    headers += ["agreement", "max abs diff", "p50 speedup"]
    rows = []
    for key, e in results.items():
        rows.append(
            [
                key,
                f"{e['p50_ms_b1']:.3f}",
                f"{e['p95_ms_b1']:.3f}",
                f"{e['throughput_b64']:,.0f}",
                f"{e['size_mb']:.3f}",
                f"{e['params']:,}",
                "-" if e["peak_mem_mb"] is None else f"{e['peak_mem_mb']:.1f}",
                f"{e['accuracy']:.4f}",
                f"{e['top1_agreement']:.4f}",
                "-" if e["max_abs_diff"] is None else f"{e['max_abs_diff']:.2g}",
                f"{e['speedup_p50_vs_teacher']:.1f}x",
            ]
        )
    notes = (
        "Latency: p50/p95 of single-image calls; throughput: batch-64 examples/s; one intra-op "
        "thread for every model, all in one process. The student/teacher rows run through "
        "crossdistill's wrappers (pipeline included). int8: torch dynamic int8 of Linear layers "
        "for safetensors/TorchScript (torch has no dynamic int8 Conv2d, so the convolutions stay "
        "float); onnxruntime static QDQ int8 (per-channel weights, activations calibrated on 1024 "
        "training images, classifier float) for ONNX. Peak MB: increase of peak RSS while loading "
        "and running batch 64 (a lower bound: freed memory is reused)."
    )
    name = "export" + (".quick" if args.quick else "")
    print(write_results(name, result, markdown_table(headers, rows), notes))


if __name__ == "__main__":
    main()
