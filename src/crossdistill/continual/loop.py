"""``run_continual``: a continual recipe trained task after task, each task a Run inside the run
folder, every model evaluated on every task's test examples.

The run folder of a continual recipe holds::

    recipe.yaml        the resolved continual recipe (a resume is checked against it)
    task1/ task2/ ...  one Run per task (or joint/: one Run on every task at once)
    continual.json     the accuracy matrix and the metrics of crossdistill.continual.metrics
    continual.md       the same as a short table
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from crossdistill._util.device import select_device, to_device
from crossdistill._util.files import write_atomic, write_json
from crossdistill.build import build_eval_loader
from crossdistill.config import Recipe, dump_recipe
from crossdistill.continual.metrics import summary
from crossdistill.continual.tasks import TaskPlan, plan_tasks, task_recipe
from crossdistill.core.wrappers import Student
from crossdistill.errors import ConfigError
from crossdistill.pipeline import RunResult, run_or_reuse
from crossdistill.registry import import_modules
from crossdistill.runs import MULTI_RUN_RECIPE, Run, claim_multi_run_folder
from crossdistill.train.runtime import distributed_rank
from crossdistill.train.trainer import History

RECIPE, RESULTS, TABLE = MULTI_RUN_RECIPE, "continual.json", "continual.md"


def run_continual(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Train ``recipe``'s tasks one after another (or, ``joint``, all at once), each a Run in
    ``recipe.run_dir``; after each task, evaluate its model on every task's test examples and
    write continual.json / continual.md. Returns the last task's Run, with the sequence's
    metrics (see :func:`crossdistill.continual.metrics.summary`).

    ``resume``: finished tasks are reused, a started one is resumed. ``overwrite``: the folder
    is emptied first. Everything that can be found wrong (a teacher or store given, tasks
    without examples, a replay buffer larger than the data) is found before training."""
    spec = recipe.continual
    if spec is None:
        raise ConfigError("the recipe has no `continual:` section")
    if resume and overwrite:
        raise ConfigError("a run is either resumed or overwritten, not both")
    if recipe.teacher is not None or recipe.store is not None:
        raise ConfigError(
            "a continual recipe names no `teacher:` or `store:`: each task's model is the "
            "frozen teacher of the next",
            hint="remove `teacher:` and `store:`; the losses that read the teacher distil "
            "from the previous task's model",
        )
    outputs = recipe.student.outputs
    if "logits" not in outputs:
        raise ConfigError(
            f"a continual recipe scores each task by accuracy, and its student's outputs "
            f"{outputs} have no `logits`",
            hint="name the student's class scores `logits` (student.outputs)",
        )
    if distributed_rank()[1] > 1:
        raise ConfigError(
            "a continual recipe runs in one process (its tasks, one after another, share one "
            "run folder)",
            hint="run it without --nproc / torchrun",
        )
    import_modules(recipe.imports)
    plan = plan_tasks(recipe)
    folder = recipe.run_dir
    # every task's recipe is built (and validated) before anything is written
    runs = [None] if spec.joint else list(range(1, plan.count + 1))
    recipes = [task_recipe(recipe, plan, t, folder) for t in runs]
    _claim(folder, recipe, resume, overwrite)
    device = select_device(recipe.train.device)
    # every task's test examples, read once: each model is tested on all of them
    tests = [task_loader(recipe, plan, folder, t, device) for t in range(1, plan.count + 1)]
    rows: list[list[float]] = []
    predictions: list[list[int]] = []
    target: list[int] = []
    ahead: list[float] = []  # each model on the next task's training examples
    run = None
    for task, derived in zip(runs, recipes, strict=True):
        run = Run(run_or_reuse(derived))
        student = run.trained_student(derived.student)
        accuracy, predicted, target = evaluate_tasks(student, tests, device)
        rows.append(accuracy)
        predictions.append(predicted)
        if task is not None and task < plan.count:
            ahead.append(next_task_accuracy(student, recipe, plan, folder, task + 1, device))
        write_results(folder, recipe, plan, rows, predictions, target, task is None, ahead)
    assert run is not None
    results = results_of(rows, predictions, target, spec.joint)
    # the last run's own evaluation (its task's test examples; joint: all of them) and the
    # sequence's numbers (continual.json has them all)
    metrics = {
        **run.final_metrics(),
        **{k: v for k, v in results.items() if isinstance(v, float)},
    }
    return RunResult(run, History(), student.model, metrics)


def _claim(folder: Path, recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Make ``folder`` the continual run's: new, emptied (``overwrite``) or, when resuming, one
    this very recipe started."""
    claim_multi_run_folder(
        folder,
        recipe,
        resume,
        overwrite,
        what="continual tasks",
        used=folder.is_dir() and any(folder.iterdir()),
        same=lambda kept, this: kept.fingerprint() == this.fingerprint(),
    )
    dump_recipe(recipe, folder / RECIPE)


def task_loader(
    recipe: Recipe,
    plan: TaskPlan,
    folder: Path,
    task: int,
    device: torch.device,
    split: str | None = None,
) -> Any:
    """An evaluation loader of task ``task``'s examples alone (no replay), as the first task's
    run would read them: of ``split`` (default ``recipe.data.eval_split``)."""
    reader = task_recipe(recipe, plan, 1, folder, eval_task=task)
    return build_eval_loader(reader, device, split=split)


def evaluate_tasks(
    student: Student, loaders: Sequence[Any], device: torch.device
) -> tuple[list[float], list[int], list[int]]:
    """``student``'s accuracy on each task's examples (``loaders``, one per task), and its
    predictions and the targets of all of them, task after task."""
    accuracy, predicted, target = [], [], []
    for loader in loaders:
        p, y = _predict(student, loader, device)
        accuracy.append(float((p == y).double().mean()) if len(y) else float("nan"))
        predicted += p.tolist()
        target += y.tolist()
    return accuracy, predicted, target


def next_task_accuracy(
    student: Student, recipe: Recipe, plan: TaskPlan, folder: Path, task: int, device: torch.device
) -> float:
    """``student``'s accuracy on task ``task``'s training examples (unaugmented, without the
    replay buffer), before it trains on them: test-then-train, one task at a time."""
    loader = task_loader(recipe, plan, folder, task, device, split=recipe.data.train_split)
    return evaluate_tasks(student, [loader], device)[0][0]


def _predict(student: Student, loader: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    student = student.to(device).eval()
    found, targets = [], []
    with torch.no_grad():
        for batch in loader:
            batch = to_device(batch, device)
            found.append(student(batch["views"]["student"])["logits"].argmax(1).cpu())
            targets.append(batch["target"].cpu())
    return torch.cat(found), torch.cat(targets)


def results_of(
    rows: list[list[float]], predictions: list[list[int]], target: list[int], joint: bool
) -> dict[str, Any]:
    """:func:`summary` of the models so far; of a joint model (one row, every task trained),
    the mean of its row, and nothing forgotten or changed."""
    if not joint:
        return summary(rows, predictions, target)
    average = sum(rows[0]) / len(rows[0])
    return {
        "accuracy": rows,
        "average_accuracy": average,
        "forgetting": None,
        "backward_transfer": None,
        "average_accuracy_per_task": [average],
        "churn": [],
    }


def write_results(
    folder: Path,
    recipe: Recipe,
    plan: TaskPlan,
    rows: list[list[float]],
    predictions: list[list[int]],
    target: list[int],
    joint: bool,
    ahead: Sequence[float] = (),
) -> None:
    """continual.json and continual.md of the tasks trained so far; ``ahead``: each model's
    accuracy on the next task's training examples (the prequential accuracy's terms)."""
    spec = recipe.continual
    assert spec is not None
    results = results_of(rows, predictions, target, joint)
    record = {
        "scenario": spec.scenario,
        "joint": joint,
        "replay": spec.replay,
        "shift": spec.shift,
        "tasks": [
            {"task": t, "classes": c, "train_examples": n}
            for t, (c, n) in enumerate(zip(plan.classes, plan.examples, strict=True), 1)
        ],
        "split": recipe.data.eval_split,
        "trained": len(rows),
        **results,
        "prequential": {
            "accuracy": list(ahead),
            "mean": sum(ahead) / len(ahead) if ahead else None,
        },
    }
    write_json(folder / RESULTS, record, indent=2)
    write_atomic(folder / TABLE, table(record, recipe.name))


def table(record: dict[str, Any], name: str) -> str:
    """continual.md: the accuracy matrix (a row per model, a column per task) and the metrics."""
    count = len(record["tasks"])
    rows = record["accuracy"]
    labels = ["joint"] if record["joint"] else [f"after task {i}" for i in range(1, len(rows) + 1)]
    lines = [
        f"# {name}: {record['scenario']}-incremental, {count} tasks",
        "",
        f"Accuracy (%) on each task's {record['split']} examples:",
        "",
        "| model | " + " | ".join(f"task {j}" for j in range(1, count + 1)) + " | average |",
        "|---" * (count + 2) + "|",
    ]
    averages = record["average_accuracy_per_task"]
    for label, row, avg in zip(labels, rows, averages, strict=True):
        cells = " | ".join(f"{100 * a:.1f}" for a in row)
        lines.append(f"| {label} | {cells} | {100 * avg:.1f} |")
    lines.append("")
    for key in ("average_accuracy", "forgetting", "backward_transfer"):
        value = record[key]
        lines.append(f"- {key.replace('_', ' ')}: " + ("—" if value is None else f"{value:.4f}"))
    if record["prequential"]["mean"] is not None:
        lines.append(f"- prequential accuracy (by task): {record['prequential']['mean']:.4f}")
    for step in record["churn"]:
        lines.append(
            f"- churn task {step['task'] - 1} → {step['task']}: {step['churn']:.4f} "
            f"(negative flips {step['negative_flip']:.4f})"
        )
    return "\n".join(lines) + "\n"
