"""Each loss on Fashion-MNIST: the same CNN student trained with cross-entropy plus that loss.

The recipe is recipes/fashion_mnist/kd.yaml (ResNet teacher of teacher.yaml → width-8 CNN
student) with its `losses:` replaced by ``ce`` + the loss under test, and taps on both models:
the last feature maps (student ``block3`` 32×7×7, teacher ``layer3`` 64×7×7) and the pooled
features (student ``pool`` 32-d, teacher ``pool`` 64-d). Students see the first ``--limit``
training images (default 10k: a teacher trained on more data than the student has) for
``--epochs`` epochs and are scored on the 10k test images after the LAST epoch.

Loss weights are the papers' (or RepDistiller's) defaults where their normalisation matches ours,
else 1; none was tuned on the test set. The attention losses need attention maps, which CNNs do
not have; they are exercised by the ViT tests instead.

    python benchmarks/loss_zoo.py            # seeds 0 1 2, 10 epochs, 10k images
    python benchmarks/loss_zoo.py --quick    # 1 seed, 2 epochs, 2k images; teacher 3 epochs
    python benchmarks/loss_zoo.py --rows scratch ofa --seeds 0 1 2 3 4 --tag ofa5

Writes benchmarks/results/loss_zoo[.quick][.TAG].json and .md.
"""

from __future__ import annotations

import argparse
import json
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
from crossdistill.errors import NonFiniteLossError  # noqa: E402
from crossdistill.pipeline import run_or_reuse  # noqa: E402
from crossdistill.runs import Run  # noqa: E402

RECIPES = HERE.parent / "recipes" / "fashion_mnist"
MAPS = {"student": "features/map", "teacher": "features/map"}
VECS = {"student": "features/vec", "teacher": "features/vec"}
CE = {"name": "ce"}


def _loss(name: str, weight: float = 1.0, adapter: str | None = None, **params: Any) -> dict:
    entry: dict[str, Any] = {"name": name, "weight": weight, "params": params}
    if adapter:
        entry["adapter"] = adapter
    return entry


# row name: (the paper, the losses added to the student's cross-entropy)
ROWS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "scratch": ("—", [CE]),
    "kd": ("Hinton et al. 2015", [_loss("ce", 0.5), _loss("kd", 0.5, temperature=4.0)]),
    "dkd": ("Zhao et al. 2022", [CE, _loss("dkd")]),
    "nkd": ("Yang et al. 2023", [CE, _loss("nkd")]),
    "logit_std_kd": ("Sun et al. 2024", [_loss("ce", 0.5), _loss("logit_std_kd", 0.5)]),
    "dist": ("Huang et al. 2022", [CE, _loss("dist")]),
    "ofa": ("Hao et al. 2023", [CE, _loss("ofa", student="features/map")]),
    "fitnet": ("Romero et al. 2015", [CE, _loss("fitnet", adapter="auto", **MAPS)]),
    "at": ("Zagoruyko & Komodakis 2017", [CE, _loss("at", **MAPS)]),
    "sp": ("Tung & Mori 2019", [CE, _loss("sp", 3000.0, **MAPS)]),
    "rkd": ("Park et al. 2019", [CE, _loss("rkd", **VECS)]),
    "pkt": ("Passalis & Tefas 2018", [CE, _loss("pkt", 30000.0, **VECS)]),
    "cc": ("Peng et al. 2019", [CE, _loss("cc", **VECS)]),
    "crd": ("Tian et al. 2020", [CE, _loss("crd", 0.8, **VECS)]),
    "affinity": ("Wu et al. 2023 (TinyCLIP)", [CE, _loss("affinity", **VECS)]),
    "nd": ("Wang et al. 2023", [CE, _loss("nd", adapter="auto", num_classes=10, **VECS)]),
}
TAPS = [
    "student.taps=[{name: map, path: block3}, {name: vec, path: pool}]",
    "teacher.taps=[{name: map, path: layer3}, {name: vec, path: pool}]",
]


def read_accuracy(trial: Trial) -> dict[str, float]:
    acc = float(trial.run.final_metrics()["accuracy"])
    print(f"{trial.label} seed {trial.seed}: {acc:.4f}", flush=True)
    return {"acc": acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, 2k images")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (10)")
    parser.add_argument("--limit", type=int, default=None, help="student training images (10k)")
    parser.add_argument("--rows", nargs="+", default=None, help="only these rows")
    parser.add_argument("--out", default=None, help="run directories (runs/bench[-quick])")
    parser.add_argument(
        "--tag", help="a partial or other run's results: loss_zoo.TAG.json (e.g. --rows ofa)"
    )
    args = parser.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    epochs = args.epochs or (2 if args.quick else 10)
    limit = args.limit or (2000 if args.quick else 10000)
    out = args.out or ("runs/bench-quick" if args.quick else "runs/bench")
    common = [f"output.dir={out}", "train.progress=false"]
    teacher_common = [*common, "train.epochs=3"] if args.quick else common
    teacher = Run(run_or_reuse(load_recipe(RECIPES / "teacher.yaml", teacher_common)))
    base = [
        *common,
        *TAPS,
        f"teacher.weights={teacher.student_file}",
        f"train.epochs={epochs}",
        f"data.limit_train={limit}",
        "data.limit_mode=first",  # published numbers used the first N (limit_mode's old behaviour)
        "eval.every_epochs=0",
    ]
    rows = {row: spec for row, spec in ROWS.items() if not args.rows or row in args.rows}
    diverged: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}

    def failed(row: str, seed: int, error: Exception) -> bool:
        """A result too: this loss, untuned, diverged."""
        if not isinstance(error, NonFiniteLossError):
            return False
        diverged[row].append({"seed": seed, "error": error.message})
        print(f"{row} seed {seed}: diverged ({error.message})", flush=True)
        return True

    found = run_variants(
        [
            Variant(row, RECIPES / "kd.yaml", [f"losses={json.dumps(losses)}"])
            for row, (_, losses) in rows.items()
        ],
        seeds,
        read_accuracy,
        common=base,
        prefix="fashion_mnist_zoo_",
        outer="variant",
        failed=failed,
    )
    results: dict[str, Any] = {}
    for row, (paper, losses) in rows.items():
        accs = found[row].get("acc", [])  # seeds that finished
        mean, std = mean_std(accs) if accs else (None, 0.0)
        results[row] = {
            "paper": paper,
            "losses": losses,
            "acc": accs,
            "diverged": diverged[row],
            "mean": mean,
            "std": std,
        }
    scratch = results.get("scratch", {}).get("mean")
    for entry in results.values():
        ok = scratch is not None and entry["mean"] is not None
        entry["gain_vs_scratch_pt"] = 100 * (entry["mean"] - scratch) if ok else None
    result = {
        "rows": results,
        "teacher_acc": float(teacher.final_metrics()["accuracy"]),
        "seeds": seeds,
        "student_epochs": epochs,
        "student_train_images": limit,
        "epoch_selection": "last",
        "quick": args.quick,
        "command": command_line(),
        "machine": machine(),
    }
    table = markdown_table(
        ["loss (+ ce)", "paper", "test accuracy (last epoch)", "vs scratch (pt)"],
        [
            (
                row,
                e["paper"],
                (format_mean_std(e["mean"], e["std"]) if e["mean"] is not None else "—")
                + (
                    f" ({len(e['diverged'])} of {len(seeds)} seeds diverged)"
                    if e["diverged"]
                    else ""
                ),
                f"{e['gain_vs_scratch_pt']:+.2f}" if e["gain_vs_scratch_pt"] is not None else "",
            )
            for row, e in results.items()
        ],
    )
    notes = (
        f"Seeds {seeds} (mean ± std); width-8 CNN student (6,274 parameters), {epochs} epochs on "
        f"the first {limit} training images; ResNet teacher ({result['teacher_acc']:.4f}) "
        "trained on all 60k. Weights: the papers' defaults, untuned. A run whose loss became "
        "NaN/Inf is reported as diverged; mean ± std are over the seeds that finished."
    )
    name = "loss_zoo" + (".quick" if args.quick else "") + (f".{args.tag}" if args.tag else "")
    write_results(name, result, table, notes)


if __name__ == "__main__":
    main()
