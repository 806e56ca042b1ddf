"""Fashion-MNIST: teacher vs the same student from scratch and with knowledge distillation.

Every number comes from the recipes in recipes/fashion_mnist/: the teacher is trained with
teacher.yaml, then for each seed the student is trained with scratch.yaml (cross-entropy only)
and kd.yaml (the same student, epochs and schedule, plus Hinton KD from that teacher). Accuracy
is on the 10k test images after the LAST epoch (no best-epoch selection).

    python benchmarks/fashion_mnist.py            # full: seeds 0 1 2, the recipes' epochs
    python benchmarks/fashion_mnist.py --quick    # a few minutes: 1 seed, 3 epochs

Writes benchmarks/results/fashion_mnist[.quick].json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    Trial,
    Variant,
    command_line,
    format_mean_std,
    machine,
    markdown_table,
    mean_std,
    run_variants,
    write_results,
)
from crossdistill import load_recipe  # noqa: E402
from crossdistill.pipeline import run_or_reuse  # noqa: E402
from crossdistill.runs import Run  # noqa: E402

RECIPES = HERE.parent / "recipes" / "fashion_mnist"


def _accuracy(run: Run) -> float:
    return float(run.final_metrics()["accuracy"])


def _params(run: Run) -> int:
    return int(run.student_meta()["parameters"])


def _read(trial: Trial) -> dict[str, Any]:
    acc = _accuracy(trial.run)
    print(f"seed {trial.seed} {trial.label}: test accuracy {acc:.4f}", flush=True)
    return {"acc": acc, "params": _params(trial.run), "epochs": trial.recipe.train.epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--out", default=None, help="run directories (runs/bench[-quick])")
    args = parser.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    # quick runs have their own folder: they must never be mistaken for (or block) full runs
    out = args.out or ("runs/bench-quick" if args.quick else "runs/bench")
    common = [f"output.dir={out}", "train.progress=false"]
    if args.quick:
        common += ["train.epochs=3"]

    teacher = Run(run_or_reuse(load_recipe(RECIPES / "teacher.yaml", common)))
    students = [
        Variant("scratch", RECIPES / "scratch.yaml"),
        Variant("kd", RECIPES / "kd.yaml", [f"teacher.weights={teacher.student_file}"]),
    ]
    found = run_variants(students, seeds, _read, common=common, prefix="fashion_mnist_")
    scratch, kd = found["scratch"]["acc"], found["kd"]["acc"]
    student_params, epochs = found["kd"]["params"][-1], found["kd"]["epochs"][-1]
    scratch_mean, scratch_std = mean_std(scratch)
    kd_mean, kd_std = mean_std(kd)

    result = {
        "teacher_acc": _accuracy(teacher),
        # a finished teacher run of the same recipe is reused (run_or_reuse checks that its
        # config.yaml has the same fingerprint); its metrics.jsonl shows how it was trained
        "teacher_run": str(teacher.path),
        "teacher_params": _params(teacher),
        "student_params": student_params,
        "scratch_acc": scratch,
        "kd_acc": kd,
        "scratch_mean": scratch_mean,
        "scratch_std": scratch_std,
        "kd_mean": kd_mean,
        "kd_std": kd_std,
        "kd_gain_pt": 100 * (kd_mean - scratch_mean),
        "epochs": epochs,
        "teacher_epochs": load_recipe(RECIPES / "teacher.yaml", common).train.epochs,
        "seeds": seeds,
        "epoch_selection": "last",
        "quick": args.quick,
        "command": command_line(),
        "machine": machine(),
    }
    result["targets"] = {
        "teacher_acc>=0.92": result["teacher_acc"] >= 0.92,
        "student_params<=teacher_params/10": student_params * 10 <= result["teacher_params"],
        "kd_mean>=scratch_mean+0.5pt": result["kd_gain_pt"] >= 0.5,
    }
    rows = [
        ("teacher (ResNet)", f"{result['teacher_acc']:.4f}", f"{result['teacher_params']:,}"),
        ("student from scratch", format_mean_std(scratch_mean, scratch_std), f"{student_params:,}"),
        ("student + KD", format_mean_std(kd_mean, kd_std), f"{student_params:,}"),
    ]
    table = markdown_table(["model", "test accuracy (last epoch)", "parameters"], rows)
    notes = (
        f"Seeds {seeds} (mean ± std), {epochs} student epochs, "
        f"KD gain {result['kd_gain_pt']:+.2f} pt."
    )
    write_results("fashion_mnist" + (".quick" if args.quick else ""), result, table, notes)


if __name__ == "__main__":
    main()
