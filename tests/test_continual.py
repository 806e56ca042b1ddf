"""Continual distillation: the metrics against a matrix worked by hand, the task splits
(class groups, disjoint seeded domain shares, shifts, the replay buffer), the bad input refused
before training, and tiny runs on the digits (LwF's teacher is the previous task's model;
a resume reuses the finished tasks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from crossdistill.config import ModelSpec, validate_recipe
from crossdistill.continual import backward_transfer, churn, forgetting, summary
from crossdistill.continual.metrics import average_accuracies, average_accuracy
from crossdistill.continual.tasks import plan_tasks, task_recipe
from crossdistill.data import load_source
from crossdistill.errors import CheckpointError, ConfigError, DataError
from crossdistill.pipeline import run_recipe
from crossdistill.runs import Run

# ------------------------------------------------------------------------------ the metrics

# R[i][j]: accuracy on task j after training task i. Task 1 is better after task 2 (0.95 >
# 0.90: the best earlier accuracy is not the one just after learning it), and task 2 is known
# before it is trained (0.85: forward transfer, which forgetting must not count).
R = [
    [0.90, 0.85, 0.00],
    [0.95, 0.80, 0.20],
    [0.50, 0.70, 0.90],
]


def test_the_metrics_of_a_matrix_worked_by_hand() -> None:
    # average accuracy: the last row's mean, (0.5 + 0.7 + 0.9) / 3
    assert average_accuracy(R) == pytest.approx(0.7)
    # forgetting: task 1 max(0.90, 0.95) - 0.50 = 0.45; task 2 max(0.80) - 0.70 = 0.10 (the
    # 0.85 before task 2 was trained does not count); mean 0.275
    assert forgetting(R) == pytest.approx(0.275)
    # backward transfer: (0.50 - 0.90 + 0.70 - 0.80) / 2 = -0.25
    assert backward_transfer(R) == pytest.approx(-0.25)
    # after two tasks: the seen tasks only, (0.95 + 0.80) / 2; task 1 gained: forgetting
    # 0.90 - 0.95 = -0.05, backward transfer +0.05
    assert average_accuracy(R[:2]) == pytest.approx(0.875)
    assert forgetting(R[:2]) == pytest.approx(-0.05)
    assert backward_transfer(R[:2]) == pytest.approx(0.05)
    assert average_accuracies(R) == pytest.approx([0.90, 0.875, 0.70])
    # one task: nothing to forget yet
    assert forgetting(R[:1]) is None and backward_transfer(R[:1]) is None


def test_churn_and_flips_worked_by_hand() -> None:
    before, after, target = [0, 1, 2, 3], [0, 2, 2, 1], [0, 1, 1, 1]
    # changed: examples 1 and 3; right then wrong: example 1; wrong then right: example 3
    assert churn(before, after, target) == pytest.approx(
        {"churn": 0.5, "negative_flip": 0.25, "positive_flip": 0.25}
    )
    # the third model changes example 1 back, from wrong to right
    found = summary(R, [before, after, [0, 1, 2, 1]], target)
    assert [step["task"] for step in found["churn"]] == [2, 3]
    assert found["churn"][1] == pytest.approx(
        {"task": 3, "churn": 0.25, "negative_flip": 0.0, "positive_flip": 0.25}
    )


@pytest.mark.parametrize("bad", [[], [[0.5, 0.5]] * 3, [0.5, 0.5]])
def test_a_matrix_of_the_wrong_shape(bad: Any) -> None:
    with pytest.raises(ValueError, match="accuracy matrix"):
        average_accuracy(bad)


def test_churn_needs_the_same_examples() -> None:
    with pytest.raises(ValueError, match="same examples"):
        churn([0, 1], [0], [0, 1])


# ------------------------------------------------------------------------------ the tasks


def _task(split: str = "train", **params: Any) -> Any:
    return load_source("continual_task", split, **{"source": "digits", **params})


def test_class_groups_hold_their_classes_only() -> None:
    whole = load_source("digits", "train")
    parts = [_task(task=t, tasks=3) for t in (1, 2, 3)]
    wanted = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]  # 10 classes in 3 consecutive groups
    for part, classes in zip(parts, wanted, strict=True):
        assert sorted(set(part.targets.tolist())) == classes
        assert len(part) == int(np.isin(whole.targets.numpy(), classes).sum())
        assert part.class_names == whole.class_names  # one shared head over every class
    listed = _task(task=2, tasks=[[9, 0], [3, 5]])
    assert sorted(set(listed.targets.tolist())) == [3, 5]


def test_domain_shares_are_disjoint_and_seeded() -> None:
    whole = load_source("digits", "train")
    parts = [_task(task=t, tasks=3, scenario="domain", seed=1) for t in (1, 2, 3)]
    rows = [{tuple(x.flatten().tolist()) for x in p.fields["input"]} for p in parts]
    assert sum(len(p) for p in parts) == len(whole)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    assert not (rows[0] & rows[1]) and not (rows[1] & rows[2]) and not (rows[0] & rows[2])
    for p in parts:  # every class in every task
        assert len(set(p.targets.tolist())) == 10
    again = _task(task=2, tasks=3, scenario="domain", seed=1)
    other = _task(task=2, tasks=3, scenario="domain", seed=2)
    assert torch.equal(again.fields["input"], parts[1].fields["input"])
    assert not torch.equal(other.fields["input"], parts[1].fields["input"])


def test_the_permute_shift() -> None:
    plain = [_task(task=t, tasks=2, scenario="domain") for t in (1, 2)]
    shifted = [_task(task=t, tasks=2, scenario="domain", shift="permute") for t in (1, 2)]
    assert torch.equal(plain[0].fields["input"], shifted[0].fields["input"])  # task 1 as is
    a, b = plain[1].fields["input"], shifted[1].fields["input"]
    assert not torch.equal(a, b)
    # each example's own pixels, moved...
    flat_a, flat_b = a.flatten(1).double(), b.flatten(1).double()
    assert torch.equal(flat_a.sort(1).values, flat_b.sort(1).values)
    # ...by one permutation for every example: the pixel columns keep their spreads (a
    # permutation drawn per example would even them out)
    spread_a, spread_b = flat_a.var(0).sort().values, flat_b.var(0).sort().values
    torch.testing.assert_close(spread_a, spread_b)
    assert not torch.allclose(flat_a.var(0), flat_b.var(0))
    assert torch.equal(
        b, _task(task=2, tasks=2, scenario="domain", shift="permute").fields["input"]
    )


def test_the_replay_buffer() -> None:
    part = _task(task=3, tasks=3, replay=70)
    origin = part.meta["task"]
    own = _task(task=3, tasks=3)
    assert len(part) == len(own) + 70 and int((origin == 3).sum()) == len(own)
    replayed = part.targets[origin < 3]
    counts = np.bincount(replayed.numpy(), minlength=7)[:7]  # classes 0..6 of tasks 1 and 2
    assert counts.sum() == 70 and counts.max() - counts.min() <= 1  # class-balanced
    assert set(part.targets[origin == 1].tolist()) <= {0, 1, 2, 3}
    assert torch.equal(part.fields["input"], _task(task=3, tasks=3, replay=70).fields["input"])
    assert len(_task("test", task=3, tasks=3, replay=70)) == len(_task("test", task=3, tasks=3))
    assert len(_task(task=1, tasks=3, replay=70)) == len(_task(task=1, tasks=3))  # none before
    # a share of the epoch: the same 70 examples, each repeated to make up about half of it
    half = _task(task=3, tasks=3, replay=70, replay_share=0.5)
    repeat = round(len(own) / 70)  # 0.5 * n / (0.5 * 70)
    assert int((half.meta["task"] < 3).sum()) == 70 * repeat and repeat > 1

    def rows(x: torch.Tensor) -> list[tuple[int, ...]]:
        return sorted(tuple(r.flatten().tolist()) for r in x)

    replayed = rows(half.fields["input"][half.meta["task"] < 3])
    assert replayed == sorted(rows(part.fields["input"][origin < 3]) * repeat)


# ------------------------------------------------------------------------------ bad input


def _recipe(tmp_path: Path, **continual: Any) -> Any:
    return validate_recipe(
        {
            "name": "seq",
            "data": {"source": "digits", "batch_size": 64},
            "student": {
                "model": "mlp",
                "params": {"in_features": 64, "num_classes": 10, "hidden": [16]},
            },
            "losses": [{"name": "ce"}, {"name": "lwf", "params": {"temperature": 2.0}}],
            "train": {
                "epochs": 1,
                "device": "cpu",
                "progress": False,
                "optimizer": {"name": "sgd", "lr": 0.1},
            },
            "output": {"dir": str(tmp_path)},
            "continual": {"tasks": [[0, 1, 2], [3, 4, 5]], **continual},
        }
    )


def test_class_tasks_that_overlap_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"class 2 in tasks \[1, 2\]; class 3 in tasks"):
        _recipe(tmp_path, tasks=[[0, 1, 2, 3], [2, 3, 4]])
    _recipe(tmp_path, tasks=3, scenario="domain")  # every task holds every class: fine
    with pytest.raises(ConfigError, match="domain-incremental sequence gives the number"):
        _recipe(tmp_path, tasks=[[0], [1]], scenario="domain")
    with pytest.raises(ConfigError, match="shift"):
        _recipe(tmp_path, shift="permute")
    with pytest.raises(ConfigError, match="set `replay:` too"):
        _recipe(tmp_path, replay_share=0.5)


def test_a_replay_buffer_larger_than_the_data_is_refused_before_training(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, replay=100_000)
    with pytest.raises(DataError, match="replay buffer of 100000 examples is larger than the"):
        run_recipe(recipe)
    assert not (tmp_path / "seq").exists()


def test_more_tasks_than_classes_and_a_teacher_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="11 class-incremental tasks need at least 11"):
        run_recipe(_recipe(tmp_path, tasks=11))
    with pytest.raises(ConfigError, match=r"tasks name classes \[12\], which"):
        run_recipe(_recipe(tmp_path, tasks=[[0, 1], [2, 12]]))
    raw = _recipe(tmp_path).model_dump(mode="json")
    raw["teacher"] = {"model": "mlp", "params": {"in_features": 64}}
    with pytest.raises(ConfigError, match="names no `teacher:`"):
        run_recipe(validate_recipe(raw))
    assert not (tmp_path / "seq").exists()


# ------------------------------------------------------------------------------ tiny runs


def test_a_tiny_sequence_with_lwf_and_its_resume(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, replay=40)
    result = run_recipe(recipe)
    folder = tmp_path / "seq"
    assert result.run_dir == folder / "task2"
    record = json.loads((folder / "continual.json").read_text())
    matrix = np.asarray(record["accuracy"])
    assert matrix.shape == (2, 2) and np.isfinite(matrix).all()
    assert record["forgetting"] == pytest.approx(max(matrix[0, 0], 0) - matrix[1, 0])
    assert result.metrics["average_accuracy"] == pytest.approx(matrix[1].mean())
    assert len(record["churn"]) == 1 and "| after task 2 |" in (folder / "continual.md").read_text()
    # test-then-train: task 1's model on task 2's training examples, classes it never saw
    (ahead,) = record["prequential"]["accuracy"]
    assert ahead < 0.1 and record["prequential"]["mean"] == ahead
    # task 1 learns from the labels alone; task 2 starts from task 1's model, which teaches it
    first, second = Run(folder / "task1"), Run(folder / "task2")
    assert [loss.name for loss in first.config.losses] == ["ce"]
    lwf = second.config.losses[1]
    assert lwf.name == "lwf" and lwf.params["classes"] == [0, 1, 2]
    assert second.config.teacher is not None and second.config.student.weights is not None
    assert Path(str(second.config.teacher.weights)) == first.student_file
    teacher = second.teacher()
    assert teacher is not None
    before = load_file(first.student_file)
    for key, value in teacher.model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    # an interrupted task 2 (its checkpoint kept) is resumed; task 1 is reused as it is
    stamp = first.student_file.stat().st_mtime_ns, first.metrics_file.read_bytes()
    second.student_file.unlink()
    second.student_json.unlink()
    with pytest.raises(ConfigError, match="already exists"):
        run_recipe(recipe)
    again = run_recipe(recipe, resume=True)
    assert (first.student_file.stat().st_mtime_ns, first.metrics_file.read_bytes()) == stamp
    assert second.finished
    assert json.loads((folder / "continual.json").read_text())["accuracy"] == record["accuracy"]
    assert again.metrics["average_accuracy"] == pytest.approx(result.metrics["average_accuracy"])
    # another continual recipe in the same folder is refused, not mixed in
    with pytest.raises(CheckpointError, match="continual tasks of a different recipe"):
        run_recipe(_recipe(tmp_path, replay=10), resume=True)


def test_joint_training_is_one_run_evaluated_per_task(tmp_path: Path) -> None:
    result = run_recipe(_recipe(tmp_path, joint=True))
    folder = tmp_path / "seq"
    assert result.run_dir == folder / "joint" and not (folder / "task1").exists()
    record = json.loads((folder / "continual.json").read_text())
    assert record["joint"] and np.asarray(record["accuracy"]).shape == (1, 2)
    assert record["forgetting"] is None and record["churn"] == []
    assert record["prequential"]["mean"] is None
    assert record["average_accuracy"] == pytest.approx(np.mean(record["accuracy"][0]))
    assert [loss.name for loss in Run(folder / "joint").config.losses] == ["ce"]


def test_the_recipe_of_each_task(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, tasks=[[0, 1, 2], [3, 4, 5], [6, 7]], replay=30)
    plan = plan_tasks(recipe)
    third = task_recipe(recipe, plan, 3, tmp_path / "seq")
    assert third.data.source == "continual_task" and third.data.params["task"] == 3
    assert third.data.params["replay"] == 30 and third.continual is None
    # the old model knows the classes of tasks 1 and 2
    assert third.losses[1].params["classes"] == [0, 1, 2, 3, 4, 5]
    assert third.teacher is not None and third.teacher.model == third.student.model
    assert str(third.teacher.weights).endswith("task2/student.safetensors")
    assert task_recipe(recipe, plan, 1, tmp_path).data.params.get("replay") is None
    # domain-incremental: the old model knows every class, and the loss reads all of them
    domain = _recipe(tmp_path, tasks=3, scenario="domain")
    second = task_recipe(domain, plan_tasks(domain), 2, tmp_path / "seq")
    assert "classes" not in second.losses[1].params
    # every loss reads the teacher: the first task would learn nothing
    raw = recipe.model_dump(mode="json")
    raw["losses"] = [{"name": "lwf"}]
    with pytest.raises(ConfigError, match="every loss reads the teacher"):
        task_recipe(validate_recipe(raw), plan, 1, tmp_path)


OWN_MODEL = """\
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)
"""


def test_a_users_own_model_by_import_path_trains_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recipe is the user's: the model it names by import path is built for each task's
    evaluation and on resume without --allow-import (a run folder alone would need it)."""
    (tmp_path / "own_net_c.py").write_text(OWN_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = _recipe(tmp_path).model_copy(
        update={"student": ModelSpec(model="own_net_c:Net", params={"hidden": 8})}
    )
    run_recipe(recipe)
    done = json.loads((recipe.run_dir / "continual.json").read_text())
    assert len(done["accuracy"]) == 2
    result = run_recipe(recipe, resume=True)  # every task reused: read back, not retrained
    assert (
        json.loads((recipe.run_dir / "continual.json").read_text())["accuracy"] == done["accuracy"]
    )
    assert type(result.student).__module__ == "own_net_c"
