"""A user's own teacher and data, from Python and from recipes: per-side views, plain
DataLoaders, a teacher of another label space, knowledge stores without the teacher, and the
evaluation of all of it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import crossdistill
from crossdistill import Run, Split, Student, Teacher, distill
from crossdistill.data.saved import save_split
from crossdistill.errors import DataError, ShapeError, StoreError
from crossdistill.export import export_run
from crossdistill.pipeline import run_recipe

QUIET = {"progress": False, "device": "cpu"}


def _sensors(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four 'sensor channels' of 8 steps; the label depends on channels 0 and 2 only."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 8, generator=g)
    y = (x[:, 0].mean(1) > 0).long() + (x[:, 2].mean(1) > 0.3).long()
    return x, y


def _mlp(inputs: int, classes: int) -> nn.Module:
    return crossdistill.build_model("mlp", {"in_features": inputs, "num_classes": classes})


def test_a_plain_dataloader_of_pairs_trains() -> None:
    x, y = _sensors()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    teacher, student = _mlp(32, 3), _mlp(32, 3)
    result = distill(teacher, student, loader, eval_data=loader, epochs=2, **QUIET)
    assert result.student is student and len(result.history.train_loss) == 2
    assert 0 <= result.metrics["accuracy"] <= 1


class PerSide(Dataset):
    """The teacher sees all four channels, the student (a cheaper device) two of them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"teacher": self.x[i], "student": self.x[i, [0, 2]], "target": self.y[i]}


def test_a_dataset_of_per_side_dicts_trains() -> None:
    x, y = _sensors()
    data = PerSide(x, y)
    result = distill(_mlp(32, 3), _mlp(16, 3), data, eval_data=data, epochs=2, **QUIET)
    assert {"accuracy", "agreement", "macro_f1"} <= set(result.metrics)
    loader = DataLoader(data, batch_size=40)
    assert distill(_mlp(32, 3), _mlp(16, 3), loader, epochs=1, **QUIET).history.train_loss


def test_a_dataloader_of_something_else_is_named() -> None:
    loader = DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2)  # 1-tuples
    with pytest.raises(DataError, match=r"not an \(x, y\) pair or a dict"):
        distill(None, _mlp(2, 2), loader, losses=["ce"], **QUIET)


def test_a_teacher_of_another_label_space_is_learned_whole(caplog) -> None:
    """A pretrained 7-class teacher on 3-class data: the student mimics all 7 classes (no
    ``num_classes: 3`` demanded of either), and is evaluated by agreement, not accuracy."""
    x, y = _sensors()
    split = Split({"x": x}, name="sensors", targets=y, class_names=["a", "b", "c"])
    teacher = _mlp(32, 7)
    result = distill(teacher, _mlp(32, 7), split, losses=["kd"], eval_data=split, epochs=2,
                     **QUIET)  # fmt: skip
    assert {"agreement", "agreement_top5", "kl_teacher_student"} <= set(result.metrics)
    assert "accuracy" not in result.metrics and "teacher_accuracy" not in result.metrics
    with pytest.raises(ShapeError, match=r"loss 'ce' reads hard labels of the data's 3 classes"):
        distill(teacher, _mlp(32, 7), split, losses=["ce", "kd"], **QUIET)


def test_logits_that_are_probabilities_are_named(caplog) -> None:
    x, y = _sensors()
    teacher = nn.Sequential(_mlp(32, 3), nn.Softmax(dim=1))
    with caplog.at_level(logging.WARNING):
        distill(teacher, _mlp(32, 3), TensorDataset(x, y), epochs=1, **QUIET)
    assert "the teacher's 'logits' looks like probabilities" in caplog.text


def test_eval_json_has_macro_f1_and_per_class_scores(tmp_path: Path) -> None:
    x, y = _sensors()
    split = Split({"x": x}, name="sensors", targets=y, class_names=["low", "mid", "high"])
    student = _mlp(32, 3)
    distill(_mlp(32, 3), student, split, eval_data=split, epochs=1, run_dir=tmp_path / "r",
            **QUIET)  # fmt: skip
    final = Run(tmp_path / "r").final_metrics()
    assert set(final["per_class"]) == {"low", "mid", "high"}
    assert {"precision", "recall", "f1", "support"} == set(final["per_class"]["mid"])
    assert sum(row["support"] for row in final["per_class"].values()) == len(y)
    f1s = [row["f1"] for row in final["per_class"].values() if row["support"]]
    assert final["macro_f1"] == pytest.approx(sum(f1s) / len(f1s))
    lines = Run(tmp_path / "r").metrics_file.read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    assert all("per_class" not in r for r in logged)  # the log keeps numbers only


def test_cache_then_distill_from_the_store_equals_online(tmp_path: Path) -> None:
    """The teacher's outputs written once by ``crossdistill.cache`` train the same student as
    the teacher online, bit for bit (float32 store), with no teacher at hand."""
    x, y = _sensors()
    split = Split({"x": x}, name="sensors", targets=y, class_names=["a", "b", "c"])
    torch.manual_seed(1)
    teacher = _mlp(32, 3)
    store = crossdistill.cache(teacher, split, tmp_path / "store", dtype="float32",
                               progress=False)  # fmt: skip
    trained = []
    for given in ({"teacher": teacher}, {"teacher": None, "store": store}):
        torch.manual_seed(2)
        student = _mlp(32, 3)
        t = given.pop("teacher")
        distill(t, student, split, epochs=2, batch_size=32, **given, **QUIET)
        trained.append(student.state_dict())
    for key, value in trained[0].items():
        assert torch.equal(value, trained[1][key]), key
    other = Split({"x": x + 1}, name="other", targets=y, class_names=["a", "b", "c"])
    with pytest.raises(StoreError, match="training data"):
        distill(None, _mlp(32, 3), other, store=store, **QUIET)


def _views_recipe(tmp_path: Path) -> Path:
    x, y = _sensors()
    folder = tmp_path / "data"
    save_split(Split({"all": x}, name="sensors/train", targets=y, class_names=list("abc")),
               folder / "train")  # fmt: skip
    save_split(Split({"all": x[:40]}, name="sensors/test", targets=y[:40],
                     class_names=list("abc")), folder / "test")  # fmt: skip
    teacher_run = tmp_path / "runs" / "teacher"
    distill(None, _mlp(32, 3), Split({"all": x}, name="t", targets=y), losses=["ce"], epochs=1,
            run_dir=teacher_run, **QUIET)  # fmt: skip
    recipe = {
        "name": "wrist",
        "data": {
            "source": "saved_split",
            "params": {"path": str(folder)},
            "views": {"teacher": "all", "student": {"field": "all", "channels": [0, 2]}},
            "batch_size": 32,
        },
        "teacher": {
            "model": "mlp",
            "params": {"in_features": 32, "num_classes": 3},
            "weights": str(Run(teacher_run).student_file),
        },
        "student": {"model": "mlp", "params": {"in_features": 16, "num_classes": 3}},
        "losses": [{"name": "ce"}, {"name": "kd"}],
        "train": {"epochs": 1, "progress": False},
        "output": {"dir": str(tmp_path / "runs")},
    }
    path = tmp_path / "wrist.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_recipe_gives_each_side_its_channels_and_the_export_takes_the_students(
    tmp_path: Path,
) -> None:
    recipe = crossdistill.load_recipe(_views_recipe(tmp_path))
    result = run_recipe(recipe)
    batch = next(iter(Run(result.run_dir).eval_data()))
    assert batch["views"]["teacher"].shape[1:] == (4, 8)
    assert batch["views"]["student"].shape[1:] == (2, 8)
    folder = export_run(result.run_dir, "onnx")
    pre = json.loads((folder / "preprocessing.json").read_text())
    assert pre["input"]["shape"] == [None, 2, 8]
    bad = crossdistill.load_recipe(_views_recipe(tmp_path / "b"), ["data.views.student=nope"])
    with pytest.raises(DataError, match=r"view 'student' reads \['nope'\]"):
        run_recipe(bad)
    channels = "data.views.student={field: all, channels: [0, 7]}"
    with pytest.raises(DataError, match=r"channels \[7\] of field 'all', which has 4"):
        run_recipe(crossdistill.load_recipe(_views_recipe(tmp_path / "c"), [channels]))


def test_per_side_wrappers_keep_their_own_pipelines() -> None:
    x, y = _sensors()
    data = PerSide(x, y)
    seen: dict[str, tuple[int, ...]] = {}

    class Record(nn.Module):
        def __init__(self, side: str) -> None:
            super().__init__()
            self.side = side

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            seen[self.side] = tuple(v.shape[1:])
            return v

    distill(
        Teacher(_mlp(32, 3), pipeline=Record("teacher")),
        Student(_mlp(16, 3), pipeline=Record("student")),
        data,
        epochs=1,
        **QUIET,
    )
    assert seen == {"teacher": (4, 8), "student": (2, 8)}
