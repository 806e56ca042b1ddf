"""The Fashion-MNIST demo that `make demo` runs.

Trains (or reuses) a ResNet-style teacher, then the same small CNN student from scratch and with
knowledge distillation, and prints teacher / scratch / distilled: test accuracy, parameters, size
on disk and CPU latency per image.  Usage: python scripts/demo_fashion_mnist.py [--epochs N]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from rich.console import Console
from rich.table import Table

from crossdistill import CrossDistillError, Run, load_recipe
from crossdistill.evaluate.latency import latency_ms
from crossdistill.pipeline import run_or_reuse

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "fashion_mnist"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6, help="epochs for each of the 3 models")
    parser.add_argument("--out", default="runs/demo", help="where the run directories go")
    args = parser.parse_args()
    console = Console()
    common = [f"train.epochs={args.epochs}", f"output.dir={args.out}"]
    teacher = Run(run_or_reuse(load_recipe(RECIPES / "teacher.yaml", common)))
    runs = {
        "teacher (ResNet)": teacher,
        "student, scratch": Run(run_or_reuse(load_recipe(RECIPES / "scratch.yaml", common))),
        "student, KD": Run(
            run_or_reuse(
                load_recipe(
                    RECIPES / "kd.yaml", [*common, f"teacher.weights={teacher.student_file}"]
                )
            )
        ),
    }
    table = Table(
        title=f"Fashion-MNIST test set, {args.epochs} epochs each (last epoch)",
        caption="latency: batch 1, 1 thread, median of 50 calls",
    )
    for col in ("model", "test acc", "params", "size KB", "CPU ms/image"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for label, run in runs.items():
        student = run.student()
        acc = run.final_metrics()["accuracy"]
        params = sum(p.numel() for p in student.model.parameters())
        size_kb = run.student_file.stat().st_size / 1024
        ms = latency_ms(student, torch.rand(1, 1, 28, 28))
        table.add_row(label, f"{acc:.4f}", f"{params:,}", f"{size_kb:.1f}", f"{ms:.3f}")
    console.print(table)
    console.print(f"run directories: {Path(args.out).resolve()}")


if __name__ == "__main__":
    try:
        main()
    except CrossDistillError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        raise SystemExit(2) from None
