"""The tasks of a continual recipe: what each task holds (checked before any training), and the
recipe of each task's run, derived from the continual recipe.

Task ``t``'s run trains on the ``continual_task`` source (task ``t`` of the recipe's own source,
plus the replay buffer), starts from task ``t-1``'s student, and has task ``t-1``'s student as
its frozen teacher; on the first task (and in joint training) the losses that read the teacher
are left out. See docs/continual.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdistill.build import reads_teacher, trained_spec
from crossdistill.config import ContinualSpec, Recipe, TeacherSpec, validate_recipe
from crossdistill.data import load_source
from crossdistill.data.sources.continual_task import class_labels, data_classes, task_members
from crossdistill.errors import ConfigError, DataError
from crossdistill.losses.registry import LOSSES

SOURCE = "continual_task"  # the data source each task's run reads


@dataclass(frozen=True)
class TaskPlan:
    """What each task of a sequence holds: ``classes[t]`` (class-incremental: its classes;
    domain-incremental: every class) and ``examples[t]``, its training examples."""

    classes: list[list[int]]
    examples: list[int]

    @property
    def count(self) -> int:
        return len(self.examples)

    def seen_classes(self, task: int) -> list[int]:
        """The classes of tasks ``1 .. task-1`` (from 1)."""
        return sorted({c for group in self.classes[: task - 1] for c in group})


def plan_tasks(recipe: Recipe) -> TaskPlan:
    """The tasks of ``recipe``'s training split, checked before any training: every task holds
    examples, and the replay buffer is no larger than the first task's examples (what the
    second task replays from)."""
    spec = _spec(recipe)
    data = recipe.data
    split = load_source(data.source, data.train_split, **data.params)
    members = task_members(split, spec.scenario, spec.tasks, spec.seed)
    labels = class_labels(split)
    if spec.scenario == "class":
        classes = [sorted(set(labels[m].tolist())) if labels is not None else [] for m in members]
        if isinstance(spec.tasks, list):
            classes = [sorted(g) for g in spec.tasks]
    else:
        every = data_classes(split, labels) if labels is not None else []
        classes = [every for _ in members]
    empty = [t for t, m in enumerate(members, 1) if len(m) == 0]
    if empty:
        raise DataError(
            f"continual: tasks {empty} hold no training example of {split.name!r}",
            hint="give each task classes the training data has (continual.tasks)",
        )
    if spec.replay and not spec.joint and spec.replay > len(members[0]):
        raise DataError(
            f"continual: a replay buffer of {spec.replay} examples is larger than the "
            f"{len(members[0])} training examples of task 1, which task 2 replays from",
            hint=f"use continual.replay of at most {len(members[0])}",
        )
    return TaskPlan(classes, [len(m) for m in members])


def _spec(recipe: Recipe) -> ContinualSpec:
    if recipe.continual is None:
        raise ConfigError("the recipe has no `continual:` section")
    return recipe.continual


def task_recipe(
    recipe: Recipe, plan: TaskPlan, task: int | None, folder: Path, eval_task: int | None = None
) -> Recipe:
    """The recipe of task ``task``'s run (from 1; ``None``: the joint run over every task),
    written in ``folder`` as ``task<t>`` (or ``joint``). ``eval_task``: the same recipe reading
    task ``eval_task``'s examples (no replay), to evaluate a model on them."""
    spec = _spec(recipe)
    raw: dict[str, Any] = recipe.model_dump(mode="json")
    raw.pop("continual", None)
    raw["name"] = "joint" if task is None else f"task{task}"
    raw["output"] = {"dir": str(folder)}
    params = {
        "source": recipe.data.source,
        "params": recipe.data.params,
        "scenario": spec.scenario,
        "tasks": spec.tasks,
        "seed": spec.seed,
        "shift": spec.shift,
        "task": list(range(1, plan.count + 1)) if task is None else task,
    }
    if task is not None and task > 1 and spec.replay:
        params["replay"] = spec.replay
        if spec.replay_share is not None:
            params["replay_share"] = spec.replay_share
    if eval_task is not None:
        params["task"] = eval_task
        params.pop("replay", None)
        params.pop("replay_share", None)
    raw["data"].update(source=SOURCE, params=params)
    first = task is None or task == 1
    distills = [reads_teacher(loss, f"losses[{i}]") for i, loss in enumerate(recipe.losses)]
    losses = []
    for i, loss in enumerate(recipe.losses):
        if not distills[i]:
            losses.append(raw["losses"][i])
        elif not first:
            entry = dict(raw["losses"][i])
            # one shared head: the old model knows only the classes of the tasks before
            if spec.scenario == "class" and LOSSES.accepts(loss.name, "classes"):
                entry["params"] = {"classes": plan.seen_classes(task), **entry["params"]}  # type: ignore[arg-type]
            losses.append(entry)
    if not losses:
        raise ConfigError(
            "continual: every loss reads the teacher, and the first task has none (the model "
            "of each task teaches the next)",
            hint="add a loss on the labels, e.g. {name: ce}",
        )
    raw["losses"] = losses
    if not first:
        before = folder / f"task{task - 1}" / "student.safetensors"  # type: ignore[operator]
        student = trained_spec(recipe.student, before)
        raw["student"] = student.model_dump(mode="json")
        if any(distills):
            raw["teacher"] = TeacherSpec(**student.model_dump()).model_dump(mode="json")
    return validate_recipe(raw, source=f"task {task} of continual recipe {recipe.name!r}")
