"""Is the student better with the teacher than without, on the user's task? Scratch, KD at the
README's defaults, and KD tuned on the validation split by ``crossdistill tune``.

For each task, three arms of the same student, data and budget:

- ``scratch``: cross-entropy alone, no teacher;
- ``defaults``: 0.5 · CE + 0.5 · KD at T = 4 (the README's weights);
- ``tuned``: ``crossdistill tune`` on the task's recipe (``tune.space: auto``: every loss weight,
  each loss's built-in hyper-parameter ranges, the learning rate; TPE seeded 0, median pruning;
  ``--trials`` trials, each trained with seed 0 and scored on the validation split at its LAST
  epoch), then the best recipe trained with every seed.

Every arm trains on the same examples: the validation split is carved from the training split
by ``data.validation`` (seeded apart from the recipe's seed), so scratch and defaults lose the
same examples the tuned arm validates on. The test split is read once per run, after the last
epoch, and never while tuning. Numbers are mean ± std over the seeds.

Tasks:

- ``vowels``: JapaneseVowels (bundled with sktime, installs offline; 12 cepstral channels of up
  to 29 frames, 9 speakers). It is not one of crossdistill's sources: the benchmark writes it to
  an ``.npz`` that the ``arrays`` source reads, as a user would. The published split has a
  balanced training side (30 recordings per speaker) and an imbalanced test side (24 to 88);
  this task trains on the imbalanced side (370 recordings) and tests on the balanced one (270),
  so that the student learns from imbalanced data and every speaker counts equally in the
  score. Main metric: macro-F1. Teacher and student are the 1-D CNNs of examples/sensors
  (20,513 and 617 parameters); recipes in benchmarks/tune_recipes/.
- ``fashion_cnn`` and ``vit_to_cnn``: recipes/fashion_mnist/kd.yaml (ResNet teacher) and
  vit_to_cnn.yaml (ViT teacher, with its FitNets term) into the width-8 CNN, on 10k training
  images for 10 epochs (as benchmarks/loss_zoo.py), 10% of the training split carved for
  validation. Main metric: accuracy (the classes are balanced). Their teachers train on all of
  the training split first (several minutes each on 2 cores).

    python benchmarks/tune.py                          # every task, 30 trials, seeds 0 1 2
    python benchmarks/tune.py --tasks vowels           # one task
    python benchmarks/tune.py --quick                  # 1 seed, 3 trials, small budgets

Writes benchmarks/results/tune[.quick].json and .md (tasks not run this time keep the numbers
recorded before, with their own command and date).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "examples" / "sensors"))  # the 1-D CNNs, a user's own models

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import (  # noqa: E402
    RESULTS,
    Trial,
    Variant,
    format_mean_std,
    markdown_table,
    mean_std,
    provenance,
    run_variants,
    write_results,
)
from crossdistill import load_recipe  # noqa: E402
from crossdistill.pipeline import run_or_reuse  # noqa: E402
from crossdistill.runs import Run  # noqa: E402
from crossdistill.tune import tune_recipe  # noqa: E402

RECIPES = ROOT / "recipes" / "fashion_mnist"
OWN = HERE / "tune_recipes"
ARMS = ("scratch", "defaults", "tuned")
SCRATCH = ["teacher=null", 'losses=[{"name": "ce"}]']


def write_vowels(out: Path) -> list[str]:
    """JapaneseVowels as ``out/japanese_vowels.npz``: ``signal`` (640, 12, 29) float32, each
    recording zero-padded after its last frame; ``label`` the speaker; ``split`` train for the
    published test side (imbalanced) and test for the published training side (balanced).
    Returns the override that points the recipes at it."""
    path = out / "japanese_vowels.npz"
    overrides = [f"data.params.path={path}"]
    if path.is_file():
        return overrides
    from sktime.datasets import load_japanese_vowels  # the examples extra

    signals, labels, splits = [], [], []
    for published, ours in (("test", "train"), ("train", "test")):
        frame, y = load_japanese_vowels(split=published, return_X_y=True)
        for i in range(len(frame)):
            x = np.zeros((12, 29), np.float32)
            for c in range(12):
                channel = frame.iloc[i, c].to_numpy(np.float32)
                x[c, : len(channel)] = channel
            signals.append(x)
        labels += [str(v) for v in y]
        splits += [ours] * len(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, signal=np.stack(signals), label=np.array(labels), split=np.array(splits))
    return overrides


@dataclass(frozen=True)
class Task:
    """One task: the KD recipe at the defaults (with ``data.validation`` and ``tune:``), the
    recipe of its teacher, the task's main metric, and the budget overrides."""

    recipe: Path
    teacher: Path
    metric: str
    budget: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=list)
    # writes the task's data into the output folder; returns the overrides that read it
    prepare: Callable[[Path], list[str]] | None = None


FASHION_BUDGET = [
    "data.limit_train=10000",
    "train.epochs=10",
    "data.validation=0.1",
    "tune.metric=accuracy",
]
FASHION_QUICK = ["data.limit_train=2000", "train.epochs=2", "data.validation=0.1"]
TASKS = {
    "vowels": Task(
        OWN / "vowels_kd.yaml",
        OWN / "vowels_teacher.yaml",
        "macro_f1",
        quick=["train.epochs=5"],
        prepare=write_vowels,
    ),
    "fashion_cnn": Task(
        RECIPES / "kd.yaml", RECIPES / "teacher.yaml", "accuracy", FASHION_BUDGET, FASHION_QUICK
    ),
    "vit_to_cnn": Task(
        RECIPES / "vit_to_cnn.yaml",
        RECIPES / "vit_teacher.yaml",
        "accuracy",
        FASHION_BUDGET,
        FASHION_QUICK,
    ),
}


def run_task(name: str, task: Task, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train the teacher (once), the three arms at every seed; the study in between."""
    data = task.prepare(out) if task.prepare is not None else []
    common = [f"output.dir={out}", "train.progress=false", *data]
    teacher_common = [*common, *(["train.epochs=3"] if args.quick else [])]
    teacher = Run(run_or_reuse(load_recipe(task.teacher, teacher_common)))
    base = [
        *common,
        *(task.quick if args.quick else task.budget),
        f"teacher.weights={teacher.student_file}",
    ]
    study_dir = out / f"{name}-tune"
    began = time.perf_counter()
    study = tune_recipe(
        task.recipe,
        base,
        n_trials=args.trials,
        study_dir=study_dir,
        progress=False,
    )
    tune_seconds = time.perf_counter() - began
    if study.best_recipe is None:
        raise SystemExit(f"{name}: no trial of the study finished ({study_dir})")
    metric = task.metric

    def read(trial: Trial) -> dict[str, Any]:
        final = trial.run.final_metrics()
        print(
            f"{name} {trial.label} seed {trial.seed}: {metric} {final[metric]:.4f} "
            f"({trial.seconds:.0f} s)",
            flush=True,
        )
        return {metric: float(final[metric]), "accuracy": float(final["accuracy"])}

    variants = [
        Variant("scratch", task.recipe, SCRATCH),
        Variant("defaults", task.recipe),
        Variant("tuned", study.best_recipe, [f"teacher.weights={teacher.student_file}"]),
    ]
    found = run_variants(variants, args.seeds, read, common=base, prefix=f"{name}_")
    summary = study.summary
    entry: dict[str, Any] = {
        "metric": metric,
        "teacher": {k: teacher.final_metrics().get(k) for k in ("accuracy", "macro_f1")},
        "trials": args.trials,
        "trials_finished": summary["counts"]["complete"],
        "trials_pruned": summary["counts"]["pruned"],
        "tune_seconds": round(tune_seconds, 1),
        "tune_metric": study.summary.get("metric", metric),
        "best_validation": _rounded((study.best or {}).get("value")),
        "best_params": _rounded((study.best or {}).get("params")),
        "baseline_validation": _rounded((summary.get("baseline") or {}).get("value")),
        "study_dir": str(study_dir),
    }
    for arm in ARMS:
        for key in (metric, "accuracy") if metric != "accuracy" else (metric,):
            values = found[arm][key]
            mean, std = mean_std(values)
            entry[f"{arm}_{key}"] = [round(v, 4) for v in values]
            entry[f"{arm}_{key}_mean"] = round(mean, 4)
            entry[f"{arm}_{key}_std"] = round(std, 4)
    tuned, scratch = entry[f"tuned_{metric}_mean"], entry[f"scratch_{metric}_mean"]
    spread = 2 * max(entry[f"tuned_{metric}_std"], entry[f"scratch_{metric}_std"])
    entry["target_tuned_beats_scratch_by_2std"] = tuned - scratch > spread
    entry["target_tuned_at_least_defaults"] = tuned >= entry[f"defaults_{metric}_mean"]
    return entry


def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits, inside dicts too (what the tables show)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return float(f"{value:.4g}") if isinstance(value, float) else value


def rows_of(name: str, entry: dict[str, Any]) -> list[tuple[Any, ...]]:
    metric = entry["metric"]
    rows = []
    for arm in ARMS:
        main = format_mean_std(entry[f"{arm}_{metric}_mean"], entry[f"{arm}_{metric}_std"])
        acc = format_mean_std(entry[f"{arm}_accuracy_mean"], entry[f"{arm}_accuracy_std"])
        rows.append((name, arm, metric, main, acc))
    met = entry["target_tuned_beats_scratch_by_2std"] and entry["target_tuned_at_least_defaults"]
    rows.append((name, "targets", "", "met" if met else "**MISSED**", ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--trials", type=int, default=None, help="trials per study (30)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 trials, small budgets")
    parser.add_argument("--out", default=None, help="runs and studies (runs/bench_tune[-quick])")
    args = parser.parse_args()
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.trials = args.trials or (3 if args.quick else 30)
    out = Path(args.out or ("runs/bench_tune-quick" if args.quick else "runs/bench_tune"))
    torch.set_num_threads(1)
    name = "tune" + (".quick" if args.quick else "")
    measured: dict[str, Any] = {}
    for task in args.tasks:
        began = time.perf_counter()
        entry = run_task(task, TASKS[task], args, out)
        entry.update(seeds=args.seeds, epoch_selection="last", **provenance(began))
        measured[task] = entry
    # read only now: another invocation running other tasks may have written its tasks since
    previous = RESULTS / f"{name}.json"
    result: dict[str, Any] = json.loads(previous.read_text()) if previous.is_file() else {}
    result.setdefault("tasks", {}).update(measured)
    write(name, result)


def write(name: str, result: dict[str, Any]) -> None:
    """results/<name>.json and .md of every task in ``result``."""
    tasks = result["tasks"]
    rows = [row for task, entry in tasks.items() for row in rows_of(task, entry)]
    table = markdown_table(["task", "arm", "main metric", "test (mean ± std)", "accuracy"], rows)
    notes = "\n".join(
        f"- {task}: {e['trials']} trials ({e['trials_finished']} finished, "
        f"{e['trials_pruned']} pruned, {e['tune_seconds']:.0f} s); best validation "
        f"{e.get('tune_metric', e['metric'])} {e['best_validation']}; scratch baseline on "
        "validation "
        f"{e['baseline_validation']}; best settings {json.dumps(e['best_params'])}; seeds "
        f"{e['seeds']}, last epoch, test split; command `{e['command']}`"
        for task, e in tasks.items()
    )
    write_results(name, result, table, notes)


if __name__ == "__main__":
    main()
