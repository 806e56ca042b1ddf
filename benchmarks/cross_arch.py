"""Cross-architecture distillation on Fashion-MNIST: CNN teacher → ViT student and ViT teacher →
CNN student, each trained from scratch, with logit KD, and with logit KD + a feature loss through
a learned adapter.

Every number comes from recipes in recipes/fashion_mnist/: the teachers are trained on all 60k
training images with teacher.yaml (ResNet) and vit_teacher.yaml (ViT); the students use
cnn_to_vit.yaml and vit_to_cnn.yaml as they are (logit + feature), with the feature loss removed
(logit KD), or with only cross-entropy and no teacher (scratch) — same student, data, epochs,
optimizer and seed. Students see the first ``--limit`` training images (default 10k: the regime
where distillation matters, a teacher trained on more data than the student has) for their
recipe's epochs (CNN 15, ViT 40: without a convolutional prior a ViT needs a longer schedule,
and at 15 epochs it still underfits, where no teacher signal helps), and are scored on the 10k
test images after the LAST epoch.

    python benchmarks/cross_arch.py            # seeds 0 1 2, the recipes' epochs, 10k images
    python benchmarks/cross_arch.py --quick    # 1 seed, 3 epochs, 2k images; teachers 3 epochs

Writes benchmarks/results/cross_arch[.quick].json and .md.
"""

from __future__ import annotations

import argparse
import functools
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
from crossdistill._util.device import select_device  # noqa: E402
from crossdistill.build import build_distiller, build_loaders  # noqa: E402
from crossdistill.config import Recipe  # noqa: E402
from crossdistill.data.dataset import preview_batch  # noqa: E402
from crossdistill.pipeline import run_or_reuse  # noqa: E402
from crossdistill.runs import Run  # noqa: E402

RECIPES = HERE.parent / "recipes" / "fashion_mnist"
PAIRS = {  # pair name: (student recipe, teacher recipe)
    "cnn_to_vit": ("cnn_to_vit.yaml", "teacher.yaml"),
    "vit_to_cnn": ("vit_to_cnn.yaml", "vit_teacher.yaml"),
}
VARIANTS = ("scratch", "kd", "kd_feature")


def variant_overrides(recipe: Recipe, variant: str) -> list[str]:
    """Turn the pair's recipe (logit + feature losses) into the other two variants."""
    logit = [
        loss.model_dump(exclude_none=True) for loss in recipe.losses if loss.name in {"ce", "kd"}
    ]
    if variant == "kd_feature":
        return []
    if variant == "kd":
        return [f"losses={json.dumps(logit)}"]
    return ["teacher=null", 'losses=[{"name": "ce"}]']


def read_accuracy(pair: str, trial: Trial) -> dict[str, Any]:
    acc = float(trial.run.final_metrics()["accuracy"])
    print(f"{pair} seed {trial.seed} {trial.label}: {acc:.4f}", flush=True)
    return {"acc": acc, "params": int(trial.run.student_meta()["parameters"])}


def adapter_parameters(recipe: Recipe) -> dict[str, Any]:
    """The adapters ``auto`` builds for this recipe, and their trainable parameters."""
    distiller = build_distiller(recipe)
    device = select_device("cpu")
    train, _ = build_loaders(recipe, device)
    distiller.check(preview_batch(train.dataset))
    return {
        "adapters": {name: type(a).__name__ for name, a in distiller.adapters.items()},
        "adapter_params": sum(p.numel() for p in distiller.adapters.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 epochs, 2k images")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (recipe's)")
    parser.add_argument("--limit", type=int, default=None, help="student training images (10k)")
    parser.add_argument("--out", default=None, help="run directories (runs/bench[-quick])")
    args = parser.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    epochs = args.epochs or (3 if args.quick else None)
    limit = args.limit or (2000 if args.quick else 10000)
    out = args.out or ("runs/bench-quick" if args.quick else "runs/bench")
    common = [f"output.dir={out}", "train.progress=false"]
    teacher_common = [*common, "train.epochs=3"] if args.quick else common
    student_common = [
        *common,
        *([f"train.epochs={epochs}"] if epochs else []),
        f"data.limit_train={limit}",
        "data.limit_mode=first",  # published numbers used the first N (limit_mode's old behaviour)
        "eval.every_epochs=0",  # evaluate once, after the last epoch
    ]

    result: dict[str, Any] = {"pairs": {}}
    rows = []
    for pair, (student_recipe, teacher_recipe) in PAIRS.items():
        teacher = Run(run_or_reuse(load_recipe(RECIPES / teacher_recipe, teacher_common)))
        base = [*student_common, f"teacher.weights={teacher.student_file}"]
        recipe = load_recipe(RECIPES / student_recipe, base)
        found = run_variants(
            [Variant(v, RECIPES / student_recipe, variant_overrides(recipe, v)) for v in VARIANTS],
            seeds,
            functools.partial(read_accuracy, pair),
            common=base,
            prefix=f"fashion_mnist_{pair}_",
        )
        accs = {v: found[v]["acc"] for v in VARIANTS}
        stats = {v: mean_std(accs[v]) for v in VARIANTS}
        mean = {v: m for v, (m, _) in stats.items()}
        std = {v: s for v, (_, s) in stats.items()}
        entry = {
            "student_epochs": recipe.train.epochs,
            "teacher_acc": float(teacher.final_metrics()["accuracy"]),
            "teacher_params": int(teacher.student_meta()["parameters"]),
            "student_params": found[VARIANTS[-1]]["params"][-1],
            **{f"{v}_acc": accs[v] for v in VARIANTS},
            **{f"{v}_mean": mean[v] for v in VARIANTS},
            **{f"{v}_std": std[v] for v in VARIANTS},
            "feature_losses": [
                {"name": loss.name, "weight": loss.weight, **loss.params, "adapter": loss.adapter}
                for loss in recipe.losses
                if loss.name not in {"ce", "kd"}
            ],
            **adapter_parameters(recipe),
            "target_kd_feature>kd>scratch": mean["kd_feature"] > mean["kd"] > mean["scratch"],
        }
        result["pairs"][pair] = entry
        for v in VARIANTS:
            rows.append(
                (
                    pair,
                    v,
                    format_mean_std(mean[v], std[v]),
                    f"{entry['student_params']:,}",
                    f"{entry['adapter_params']:,}" if v == "kd_feature" else "",
                )
            )
        rows.append(
            (pair, "teacher", f"{entry['teacher_acc']:.4f}", f"{entry['teacher_params']:,}", "")
        )
    result.update(
        seeds=seeds,
        student_train_images=limit,
        epoch_selection="last",
        quick=args.quick,
        command=command_line(),
        machine=machine(),
    )
    table = markdown_table(
        ["pair", "student", "test accuracy (last epoch)", "parameters", "adapter parameters"], rows
    )
    notes = (
        f"Seeds {seeds} (mean ± std); students: "
        + ", ".join(f"{p} {e['student_epochs']} epochs" for p, e in result["pairs"].items())
        + f", on the first {limit} training images; teachers: all 60k. The adapters are "
        "trained with the student and not exported."
    )
    write_results("cross_arch" + (".quick" if args.quick else ""), result, table, notes)


if __name__ == "__main__":
    main()
