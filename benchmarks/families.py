"""The distillation families beyond one frozen teacher, each against its issue's target, on
Fashion-MNIST: mutual learning (two CNNs; a CNN and a ViT), born-again generations, a momentum
teacher on noisy labels, class-incremental learning, and weighted multi-teacher distillation.

Every run has the same budget: the recipe's model on ``data.limit_train`` training images
(10,000 by default, a random subset drawn by the seed) for ``train.epochs`` (10) epochs, tested
once on the 10,000 test images after the last epoch (never the best epoch). Numbers are mean ±
std over the seeds (0, 1, 2).

Rows and arms:

- ``mutual_cnns`` (recipes/fashion_mnist/mutual_cnns.yaml): the width-8 and width-16 CNNs each
  trained alone (CE), then together (Deep Mutual Learning). Target: each peer beats the same
  model trained alone by more than 2 std (of the alone arm).
- ``mutual_cnns_tuned``: the same, every arm on 90% of the subset, and DML's two KL weights and
  temperatures tuned on the other 10% (``crossdistill tune``, 10 trials, the student's
  accuracy); the target is checked on the tuned arm.
- ``mutual_cnn_vit`` (mutual_cnn_vit.yaml): the width-8 CNN and the small ViT alone, then
  teaching each other (logits and features, both directions). Same target.
- ``born_again`` (born_again.yaml, ``generations: 3``): generation 0 trained from the labels,
  each next generation from the previous one; the ensemble of generations 1-3. Target: the
  generation-2 student >= its teacher (generation 1) on mean accuracy, or say it is not.
- ``momentum`` (noisy_ce.yaml, ema_noisy.yaml): 40% symmetric label noise on the training
  images, cross-entropy vs a momentum teacher at the recipe's settings and at settings tuned
  on a validation split (``crossdistill tune``, 16 trials on seed 0: the EMA decay, both
  weights, the temperature; every arm trains on the same 90% of the subset); accuracy on the
  clean test set. Target: >= 2 pt.
- ``class_incremental`` (continual_class.yaml): 5 tasks of 2 classes; fine-tuning, LwF, replay,
  replay + LwF, and joint training as the ceiling; average accuracy and forgetting after the
  last task. Targets: LwF forgets less than fine-tuning and averages higher; replay + LwF >=
  replay alone.
- ``multi_teacher``: three teachers (the ResNet of teacher.yaml, the ViT of vit_teacher.yaml and
  a width-32 CNN), each trained with seed 0 on the same budget, then the width-8 CNN distilled
  from each alone (the best of the three is "best single"), from their fixed mean, confidence-
  weighted, and with teacher dropping (``multi_kd``). Target: confidence >= fixed mean >= best
  single, or the table says which ordering holds.

    python benchmarks/families.py                           # every row, seeds 0 1 2
    python benchmarks/families.py --rows mutual_cnns momentum
    python benchmarks/families.py --quick                   # 1 seed, 1,000 images, 1 epoch
    python benchmarks/families.py --rows mutual_cnns --limit-train 2000 --epochs 50 --tag lowdata

Finished runs are reused (runs/bench-families/), so an interrupted benchmark continues. Writes
benchmarks/results/families[.quick].json and .md; rows not run this time keep the numbers
recorded before.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

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
from crossdistill.config import load_recipe  # noqa: E402
from crossdistill.pipeline import run_or_reuse  # noqa: E402

RECIPES = ROOT / "recipes" / "fashion_mnist"
CE_ONLY = ['losses=[{"name": "ce"}]', "peers={}"]
VIT = (
    '{"model": "vit", "params": {"patch_size": 4, "dim": 32, "depth": 2, "heads": 2, '
    '"mlp_ratio": 2.0}, "pipeline": [{"name": "normalize", "params": {"mean": [0.2860], '
    '"std": [0.3530]}}]}'
)
Row = dict[str, Any]


def arm(values: Sequence[float]) -> dict[str, Any]:
    """One arm's numbers: per seed, mean and std (std 0 for one seed)."""
    mean, std = mean_std(values)
    return {"per_seed": [round(v, 4) for v in values], "mean": round(mean, 4), "std": round(std, 4)}


def _accuracy(*prefixes: str) -> Callable[[Trial], dict[str, float]]:
    """Reads a run's test accuracy, and each peer's (``prefixes``: ``"<peer>/"``)."""

    def read(trial: Trial) -> dict[str, float]:
        metrics = json.loads(trial.run.eval_file().read_text())
        found = {}
        for key in ("accuracy", *(f"{prefix}accuracy" for prefix in prefixes)):
            found[key] = float(metrics[key])
            print(f"  {trial.label} seed {trial.seed}: {key} {found[key]:.4f}", flush=True)
        return found

    return read


def _beats(together: dict[str, Any], alone: dict[str, Any]) -> dict[str, Any]:
    """Whether ``together`` beats ``alone`` by more than 2 std of ``alone``."""
    gain = together["mean"] - alone["mean"]
    return {
        "gain_pt": round(100 * gain, 2),
        "two_std_pt": round(200 * alone["std"], 2),
        "met": gain > 2 * alone["std"],
    }


def mutual(
    name: str,
    recipe: Path,
    peer: str,
    alone_peer: list[str],
    seeds: Sequence[int],
    common: list[str],
    space: dict[str, Any] | None = None,
    trials: int = 10,
) -> Row:
    """Each model alone (CE) and both together; the student's and the peer's accuracy. With a
    ``space``, every arm trains on the same 90% of the subset and the mutual recipe is also
    tuned on the other 10% (the student's accuracy), the target checked on the tuned arm."""
    tuning = None
    if space is not None:
        common = [*common, "data.validation=0.1"]
        best, tuning = tuned_on_validation(name, recipe, space, common, trials)
    student_alone = Variant("student_alone", recipe, CE_ONLY)
    peer_alone = Variant("peer_alone", recipe, [*CE_ONLY, *alone_peer])
    both = [Variant("mutual", recipe), *([Variant("tuned", best)] if tuning else [])]
    prefix = f"{name}_"
    found = run_variants(
        [student_alone, peer_alone], seeds, _accuracy(), common=common, prefix=prefix
    )
    together = run_variants(both, seeds, _accuracy(f"{peer}/"), common=common, prefix=prefix)
    arms = {
        "student alone": arm(found["student_alone"]["accuracy"]),
        "student mutual": arm(together["mutual"]["accuracy"]),
        f"{peer} alone": arm(found["peer_alone"]["accuracy"]),
        f"{peer} mutual": arm(together["mutual"][f"{peer}/accuracy"]),
    }
    checked = "mutual"
    if tuning:
        checked = "mutual (tuned on validation)"
        arms[f"student {checked}"] = arm(together["tuned"]["accuracy"])
        arms[f"{peer} {checked}"] = arm(together["tuned"][f"{peer}/accuracy"])
    checks = {
        "student": _beats(arms[f"student {checked}"], arms["student alone"]),
        peer: _beats(arms[f"{peer} {checked}"], arms[f"{peer} alone"]),
    }
    met = all(c["met"] for c in checks.values())
    verdict = "; ".join(
        f"{who} {c['gain_pt']:+.2f} pt vs 2 std {c['two_std_pt']:.2f} pt: "
        + ("met" if c["met"] else "missed")
        for who, c in checks.items()
    )
    return {
        "metric": "test accuracy",
        "arms": arms,
        "checks": checks,
        "target": "each peer beats the same model trained alone by > 2 std",
        "met": met,
        "verdict": verdict,
        **({"tuning": tuning} if tuning else {}),
    }


# the DML row tuned on validation: each direction's KL weight and temperature
DML_SPACE = {
    "losses.2.weight": {"low": 0.1, "high": 2.0, "log": True},
    "losses.3.weight": {"low": 0.1, "high": 2.0, "log": True},
    "losses.2.params.temperature": {"choices": [1.0, 2.0, 4.0]},
    "losses.3.params.temperature": {"choices": [1.0, 2.0, 4.0]},
}


def mutual_cnns(
    seeds: Sequence[int],
    common: list[str],
    name: str = "mutual_cnns",
    space: dict[str, Any] | None = None,
) -> Row:
    recipe = RECIPES / "mutual_cnns.yaml"
    alone = ["student.params.width=16"]
    return mutual(name, recipe, "wide", alone, seeds, common, space=space)


def mutual_cnns_tuned(seeds: Sequence[int], common: list[str]) -> Row:
    return mutual_cnns(seeds, common, "mutual_cnns_tuned", DML_SPACE)


def mutual_cnn_vit(seeds: Sequence[int], common: list[str]) -> Row:
    return mutual(
        "mutual_cnn_vit",
        RECIPES / "mutual_cnn_vit.yaml",
        "vit",
        [f"student={VIT}"],
        seeds,
        common,
    )


def born_again(seeds: Sequence[int], common: list[str]) -> Row:
    """One ``generations: 3`` run per seed; every generation's accuracy and the ensemble's."""
    per_gen: dict[str, list[float]] = {}
    for seed in seeds:
        recipe = load_recipe(
            RECIPES / "born_again.yaml", [*common, f"seed={seed}", f"name=born_again_seed{seed}"]
        )
        run_dir = run_or_reuse(recipe)
        summary = json.loads((run_dir / "generations.json").read_text())
        for label, value in _generation_accuracies(summary).items():
            per_gen.setdefault(label, []).append(value)
            print(f"  born_again seed {seed}: {label} accuracy {value:.4f}", flush=True)
    arms = {label: arm(values) for label, values in per_gen.items()}
    gain = arms["generation 2"]["mean"] - arms["generation 1"]["mean"]
    met = gain >= 0
    within = abs(gain) <= max(arms["generation 1"]["std"], arms["generation 2"]["std"])
    verdict = f"generation 2 vs generation 1: {100 * gain:+.2f} pt: " + (
        "met" if met else "not met: generation 2 is below its teacher"
    )
    if within:
        verdict += " (within one std)"
    if "generation 0" in arms:  # the labels alone, for scale
        below = arms["generation 1"]["mean"] - arms["generation 0"]["mean"]
        verdict += f"; generation 1 vs generation 0 (no teacher): {100 * below:+.2f} pt"
    return {
        "metric": "test accuracy",
        "arms": arms,
        "target": "the generation-2 student >= its teacher (generation 1) on mean accuracy",
        "met": met,
        "verdict": verdict,
    }


def _generation_accuracies(summary: dict[str, Any]) -> dict[str, float]:
    """``generation k`` → test accuracy, and ``ensemble`` (generations.json's layout)."""
    found = {
        f"generation {g['generation']}": float(g["metrics"]["accuracy"])
        for g in summary["generations"]
    }
    if summary.get("ensemble"):
        found["ensemble of generations 1-N"] = float(summary["ensemble"]["metrics"]["accuracy"])
    return found


# what the momentum row tunes on validation: the EMA's memory, the two weights (the KD weight
# is scheduled: its ramp's end) and the temperature
MOMENTUM_SPACE = {
    "teacher.decay": {"choices": [0.99, 0.995, 0.999]},
    "losses.0.weight": {"low": 0.3, "high": 1.0},
    "losses.1.schedule.weight.end": {"low": 0.1, "high": 1.0},
    "losses.1.params.temperature": {"choices": [1.0, 2.0, 4.0]},
}


def tuned_on_validation(
    name: str, recipe: Path, space: dict[str, Any], carved: list[str], trials: int
) -> tuple[Path, dict[str, Any]]:
    """The best recipe of a ``crossdistill tune`` study of ``recipe`` over ``space`` (validation
    accuracy of the student at the last epoch; seed 0), and what the study found."""
    from crossdistill.tune import tune_recipe

    out = Path(next(o for o in carved if o.startswith("output.dir=")).split("=", 1)[1])
    study = tune_recipe(
        recipe,
        [*carved, "tune.metric=accuracy", f"tune.space={json.dumps(space)}"],
        n_trials=trials,
        study_dir=out / f"{name}-tune",
        progress=False,
    )
    if study.best_recipe is None:
        raise SystemExit(f"{name}: no trial of the study finished ({out / f'{name}-tune'})")
    best = study.best or {}
    return study.best_recipe, {
        "trials": trials,
        "space": space,
        "best_params": best.get("params"),
        "best_validation": best.get("value"),
        "baseline_validation": (study.summary.get("baseline") or {}).get("value"),
    }


def momentum(seeds: Sequence[int], common: list[str], trials: int = 16) -> Row:
    """CE vs the momentum teacher at the recipe's settings and tuned on validation, every arm
    trained on the same 90% of the (noisy) training subset. The validation 10% keeps its noisy
    labels, as a user's would: under symmetric noise a model's accuracy on noisy labels is an
    increasing affine function of its clean accuracy, so it ranks models as clean labels do."""
    carved = [*common, "data.validation=0.1"]
    best, tuning = tuned_on_validation(
        "momentum", RECIPES / "ema_noisy.yaml", MOMENTUM_SPACE, carved, trials
    )
    variants = [
        Variant("noisy_ce", RECIPES / "noisy_ce.yaml"),
        Variant("ema_noisy", RECIPES / "ema_noisy.yaml"),
        Variant("ema_tuned", best),
    ]
    found = run_variants(variants, seeds, _accuracy(), common=carved, prefix="momentum_")
    arms = {
        "CE on noisy labels": arm(found["noisy_ce"]["accuracy"]),
        "momentum teacher (the recipe's settings)": arm(found["ema_noisy"]["accuracy"]),
        "momentum teacher (tuned on validation)": arm(found["ema_tuned"]["accuracy"]),
    }
    ce = arms["CE on noisy labels"]["mean"]
    gains = {label: a["mean"] - ce for label, a in arms.items() if label.startswith("momentum")}
    tuned = gains["momentum teacher (tuned on validation)"]
    met = tuned >= 0.02
    return {
        "metric": "clean test accuracy (40% symmetric noise on the training labels)",
        "arms": arms,
        "tuning": tuning,
        "target": "the momentum teacher beats CE on the clean test set by >= 2 pt",
        "met": met,
        "verdict": "; ".join(f"{label} {100 * g:+.2f} pt" for label, g in gains.items())
        + (": met" if met else ": missed"),
    }


CE = 'losses=[{"name": "ce"}]'
REPLAY = ["continual.replay=200", "continual.replay_share=0.5"]
CONTINUAL_ARMS = {
    "fine-tuning": [CE],
    "LwF": [],  # the recipe as written: ce + lwf
    "replay": [CE, *REPLAY],
    "replay + LwF": REPLAY,
    "joint (ceiling)": [CE, "continual.joint=true"],
}


def class_incremental(seeds: Sequence[int], common: list[str]) -> Row:
    """5 tasks × 2 classes; each arm's average accuracy and forgetting after the last task.
    The same images and steps as the other rows: ``data.limit_train`` is split over the five
    tasks (a task's limit), and the joint run reads all of it at once."""
    recipe_file = RECIPES / "continual_class.yaml"
    limit = int(next(o for o in common if o.startswith("data.limit_train=")).split("=")[1])
    found: dict[str, dict[str, list[float]]] = {}
    for label, overrides in CONTINUAL_ARMS.items():
        per_task = limit if "continual.joint=true" in overrides else limit // 5
        for seed in seeds:
            slug = label.split(" (")[0].replace(" + ", "_").replace("-", "").replace(" ", "_")
            recipe = load_recipe(
                recipe_file,
                [
                    *common,
                    f"data.limit_train={per_task}",
                    *overrides,
                    f"seed={seed}",
                    f"name=ci_{slug.lower()}_seed{seed}",
                ],
            )
            run_dir = run_or_reuse(recipe)
            summary = json.loads((run_dir / "continual.json").read_text())
            numbers = {  # a joint run forgets nothing: it has no forgetting
                key: float(summary[key])
                for key in ("average_accuracy", "forgetting")
                if summary[key] is not None
            }
            for key, value in numbers.items():
                found.setdefault(label, {}).setdefault(key, []).append(value)
            print(f"  class_incremental {label} seed {seed}: {numbers}", flush=True)
    arms = {
        label: {key: arm(values) for key, values in metrics.items()}
        for label, metrics in found.items()
    }

    def mean(label: str, key: str) -> float:
        return arms[label][key]["mean"]

    lwf_forgets_less = mean("LwF", "forgetting") < mean("fine-tuning", "forgetting")
    lwf_higher = mean("LwF", "average_accuracy") > mean("fine-tuning", "average_accuracy")
    replay_lwf = mean("replay + LwF", "average_accuracy") >= mean("replay", "average_accuracy")
    met = lwf_forgets_less and lwf_higher and replay_lwf
    return {
        "metric": "average accuracy and forgetting after the last task",
        "arms": arms,
        "target": "LwF forgetting < fine-tuning forgetting and average accuracy higher; "
        "replay + LwF >= replay alone; joint training reported as the ceiling",
        "met": met,
        "verdict": f"LwF forgets less: {lwf_forgets_less}; LwF averages higher: {lwf_higher}; "
        f"replay + LwF >= replay: {replay_lwf}",
    }


TEACHERS = {
    "resnet": (RECIPES / "teacher.yaml", []),
    "vit": (RECIPES / "vit_teacher.yaml", []),
    "cnn32": (RECIPES / "scratch.yaml", ["student.params.width=32"]),
}


def _teacher_members(common: list[str]) -> list[dict[str, Any]]:
    """Train (or reuse) the three teachers with seed 0; their specs as ensemble members."""
    members = []
    for name, (recipe_file, overrides) in TEACHERS.items():
        recipe = load_recipe(recipe_file, [*common, *overrides, "seed=0", f"name=teacher_{name}"])
        run_dir = run_or_reuse(recipe)
        accuracy = json.loads((run_dir / "eval.json").read_text())["accuracy"]
        print(f"  teacher {name}: accuracy {accuracy:.4f}", flush=True)
        spec = recipe.student.model_dump(mode="json", include={"model", "params", "pipeline"})
        members.append({**spec, "weights": str((run_dir / "student.safetensors").resolve())})
    return members


def multi_teacher(seeds: Sequence[int], common: list[str]) -> Row:
    members = _teacher_members(common)
    base = RECIPES / "scratch.yaml"
    kd = '{"name": "kd", "weight": 0.5, "params": {"temperature": 4.0}}'
    variants = [
        Variant(
            f"single_{name}",
            base,
            [f"teacher={json.dumps(member)}", f'losses=[{{"name": "ce", "weight": 0.5}}, {kd}]'],
        )
        for name, member in zip(TEACHERS, members, strict=True)
    ]
    ensemble = f"teacher={json.dumps({'members': members})}"

    def multi(weighting: str, drop: float = 0.0) -> list[str]:
        params = {"members": 3, "weighting": weighting, "temperature": 4.0, "drop": drop}
        loss = {"name": "multi_kd", "weight": 0.5, "params": params}
        return [ensemble, f'losses=[{{"name": "ce", "weight": 0.5}}, {json.dumps(loss)}]']

    variants += [
        Variant("fixed_mean", base, multi("fixed")),
        Variant("confidence", base, multi("confidence")),
        Variant("dropping", base, multi("fixed", 0.3)),
    ]
    found = run_variants(variants, seeds, _accuracy(), common=common, prefix="multi_")
    singles = {name: arm(found[f"single_{name}"]["accuracy"]) for name in TEACHERS}
    best = max(singles, key=lambda name: singles[name]["mean"])
    arms = {f"single teacher: {name}": singles[name] for name in TEACHERS}
    arms["fixed mean"] = arm(found["fixed_mean"]["accuracy"])
    arms["confidence-weighted"] = arm(found["confidence"]["accuracy"])
    arms["teacher dropping (0.3)"] = arm(found["dropping"]["accuracy"])
    means = {
        "confidence": arms["confidence-weighted"]["mean"],
        "fixed mean": arms["fixed mean"]["mean"],
        f"best single ({best})": singles[best]["mean"],
    }
    ordering = " > ".join(sorted(means, key=lambda k: -means[k]))
    values = list(means.values())
    met = values[0] >= values[1] >= values[2]
    return {
        "metric": "test accuracy",
        "arms": arms,
        "teachers": _teacher_accuracies(common),
        "target": "confidence-weighted >= fixed mean >= best single teacher, or say which "
        "ordering holds",
        "met": met,
        "verdict": f"ordering by mean: {ordering}",
    }


def _teacher_accuracies(common: list[str]) -> dict[str, float]:
    found = {}
    for name, (recipe_file, overrides) in TEACHERS.items():
        recipe = load_recipe(recipe_file, [*common, *overrides, "seed=0", f"name=teacher_{name}"])
        found[name] = round(json.loads((recipe.run_dir / "eval.json").read_text())["accuracy"], 4)
    return found


ROWS: dict[str, Callable[[Sequence[int], list[str]], Row]] = {
    "mutual_cnns": mutual_cnns,
    "mutual_cnns_tuned": mutual_cnns_tuned,
    "mutual_cnn_vit": mutual_cnn_vit,
    "born_again": born_again,
    "momentum": momentum,
    "class_incremental": class_incremental,
    "multi_teacher": multi_teacher,
}


def table(rows: dict[str, Row]) -> str:
    lines = []
    for name, row in rows.items():
        for label, numbers in row["arms"].items():
            if "mean" in numbers:
                cell = format_mean_std(numbers["mean"], numbers["std"])
            else:  # several metrics (class-incremental)
                cell = ", ".join(
                    f"{key} {format_mean_std(v['mean'], v['std'])}" for key, v in numbers.items()
                )
            lines.append([name, label, cell])
        lines.append([name, "**target**", f"{row['target']} → **{row['verdict']}**"])
    return markdown_table(["family", "arm", "result"], lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--limit-train", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="1 seed, 1,000 images, 1 epoch")
    parser.add_argument(
        "--tag", help="another budget's results: families.TAG.json, runs/bench-families-TAG/"
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.limit_train, args.epochs, args.tag = [0], 1000, 1, "quick"
    name = f"families.{args.tag}" if args.tag else "families"
    out = ROOT / "runs" / (f"bench-families-{args.tag}" if args.tag else "bench-families")
    common = [
        f"output.dir={out}",
        f"data.limit_train={args.limit_train}",
        f"train.epochs={args.epochs}",
        "train.progress=false",
        "train.device=cpu",
    ]
    began = time.perf_counter()
    rows: dict[str, Row] = {}
    for row in args.rows:
        print(f"{row}:", flush=True)
        start = time.perf_counter()
        rows[row] = {
            **ROWS[row](args.seeds, common),
            "seeds": args.seeds,
            "budget": {"limit_train": args.limit_train, "epochs": args.epochs},
            "seconds": round(time.perf_counter() - start, 1),
            "date": time.strftime("%Y-%m-%d"),
        }
    # read only now: another invocation running other rows may have written its rows since
    path = RESULTS / f"{name}.json"
    before = json.loads(path.read_text()) if path.is_file() else {}
    rows = {**before.get("rows", {}), **rows}
    ordered = {row: rows[row] for row in ROWS if row in rows}
    result = {"rows": ordered, **provenance(began)}
    notes = (
        f"Seeds {args.seeds} (mean ± std), last epoch, test split read once per run; each run "
        f"{args.limit_train} training images (a random subset drawn by the seed) for "
        f"{args.epochs} epochs. Rows run at other times keep their own seeds, budget and date "
        "in the JSON."
    )
    print(write_results(name, result, table(ordered), notes))


if __name__ == "__main__":
    main()
