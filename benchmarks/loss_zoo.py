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

Writes benchmarks/results/loss_zoo[.quick].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import command_line, machine, markdown_table, std, write_results  # noqa: E402
from crossdistill import load_recipe  # noqa: E402
from crossdistill.errors import NonFiniteLossError  # noqa: E402
from crossdistill.pipeline import run_or_reuse  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, 2k images")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (10)")
    parser.add_argument("--limit", type=int, default=None, help="student training images (10k)")
    parser.add_argument("--rows", nargs="+", default=None, help="only these rows")
    parser.add_argument("--out", default=None, help="run directories (runs/bench[-quick])")
    args = parser.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    epochs = args.epochs or (2 if args.quick else 10)
    limit = args.limit or (2000 if args.quick else 10000)
    out = args.out or ("runs/bench-quick" if args.quick else "runs/bench")
    common = [f"output.dir={out}", "train.progress=false"]
    teacher = run_or_reuse(
        load_recipe(RECIPES / "teacher.yaml", [*common, "train.epochs=3"] if args.quick else common)
    )
    base = [
        *common,
        *TAPS,
        f"teacher.weights={teacher / 'student.safetensors'}",
        f"train.epochs={epochs}",
        f"data.limit_train={limit}",
        "eval.every_epochs=0",
    ]
    results: dict[str, Any] = {}
    for row, (paper, losses) in ROWS.items():
        if args.rows and row not in args.rows:
            continue
        accs, diverged = [], []
        for seed in seeds:
            recipe = load_recipe(
                RECIPES / "kd.yaml",
                [
                    *base,
                    f"losses={json.dumps(losses)}",
                    f"seed={seed}",
                    f"name=fashion_mnist_zoo_{row}_seed{seed}",
                ],
            )
            try:
                run_dir = run_or_reuse(recipe)
            except NonFiniteLossError as exc:  # a result too: this loss, untuned, diverged
                diverged.append({"seed": seed, "error": exc.message})
                print(f"{row} seed {seed}: diverged ({exc.message})", flush=True)
                continue
            accs.append(float(json.loads((run_dir / "eval.json").read_text())["accuracy"]))
            print(f"{row} seed {seed}: {accs[-1]:.4f}", flush=True)
        results[row] = {
            "paper": paper,
            "losses": losses,
            "acc": accs,  # seeds that finished
            "diverged": diverged,
            "mean": statistics.mean(accs) if accs else None,
            "std": std(accs),
        }
    scratch = results.get("scratch", {}).get("mean")
    for entry in results.values():
        ok = scratch is not None and entry["mean"] is not None
        entry["gain_vs_scratch_pt"] = 100 * (entry["mean"] - scratch) if ok else None
    result = {
        "rows": results,
        "teacher_acc": float(json.loads((teacher / "eval.json").read_text())["accuracy"]),
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
                (f"{e['mean']:.4f} ± {e['std']:.4f}" if e["mean"] is not None else "—")
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
    write_results("loss_zoo" + (".quick" if args.quick else ""), result, table, notes)


if __name__ == "__main__":
    main()
