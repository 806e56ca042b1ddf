"""Frame-level and multi-label students end to end: 0/1 targets per frame (``bce``), a teacher
that emits probabilities (``bce_kd``), their evaluation (``binary_metrics`` against
scikit-learn, agreement recomputed by hand), a recipe that trains from a store with no teacher,
and evaluation problems found before training, never after it."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from torch import nn

import crossdistill
from crossdistill import Run, Split, distill
from crossdistill.data.saved import save_split
from crossdistill.errors import ShapeError, StoreError
from crossdistill.evaluate import binary_metrics
from crossdistill.losses import Loss
from crossdistill.pipeline import cache_recipe, run_recipe

QUIET = {"progress": False, "device": "cpu"}
FRAMES, HOP = 8, 16  # 8 frames of 16 samples per clip

# A user's module, imported by the recipe by name: a frame-level teacher that ends in a sigmoid
# (silero-vad-like: one speech probability per frame) and a small convolutional student.
NETS = """
import torch
from torch import nn


class FrameTeacher(nn.Module):
    '''(B, T) -> (B, T / 16, 1) probabilities that a frame's mean is above zero.'''

    def forward(self, x):
        frames = x.unfold(-1, 16, 16).mean(-1)
        return torch.sigmoid(8 * frames).unsqueeze(-1)


class FrameStudent(nn.Module):
    '''(B, T) -> (B, T / 16, 1) logits.'''

    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv1d(1, width, 16, stride=16)
        self.head = nn.Conv1d(width, 1, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x.unsqueeze(1)))).transpose(1, 2)
"""


def _clips(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Signals whose frames are 'on' (mean above zero) or 'off', and the 0/1 frame labels."""
    g = torch.Generator().manual_seed(seed)
    level = torch.randn(n, FRAMES, 1, generator=g).expand(n, FRAMES, HOP)
    x = (level + 0.3 * torch.randn(n, FRAMES, HOP, generator=g)).reshape(n, FRAMES * HOP)
    return x, (x.reshape(n, FRAMES, HOP).mean(-1) > 0).long()


@pytest.fixture
def frames_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the user's module, saved train/test splits and a recipe (bce + bce_kd)."""
    (tmp_path / "frame_nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, n, seed in (("train", 96, 0), ("test", 48, 1)):
        x, y = _clips(n, seed)
        save_split(Split({"audio": x}, name=name, targets=y), tmp_path / "data" / name)
    recipe = {
        "name": "vad",
        "data": {"source": "saved_split", "params": {"path": str(tmp_path / "data")},
                 "batch_size": 16},
        "teacher": {"model": "frame_nets:FrameTeacher", "outputs": ["probs"]},
        "student": {"model": "frame_nets:FrameStudent"},
        "losses": [
            {"name": "bce", "weight": 0.5},
            {"name": "bce_kd", "weight": 0.5,
             "params": {"teacher": "probs", "teacher_probabilities": True}},
        ],
        "train": {"epochs": 3, "optimizer": {"name": "adamw", "lr": 0.01}, **QUIET},
        "output": {"dir": str(tmp_path / "runs")},
    }  # fmt: skip
    (tmp_path / "vad.yaml").write_text(yaml.safe_dump(recipe))
    yield tmp_path
    sys.modules.pop("frame_nets", None)


# -------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("labels", [1, 5])
def test_binary_metrics_equal_scikit_learns(labels: int) -> None:
    rng = np.random.default_rng(labels)
    real = rng.random((300, labels)) < 0.3
    predicted = np.where(rng.random((300, labels)) < 0.8, real, ~real)
    got = binary_metrics(torch.from_numpy(predicted), torch.from_numpy(real))
    assert got["accuracy"] == pytest.approx((predicted == real).mean())
    assert got["f1"] == pytest.approx(f1_score(real.ravel(), predicted.ravel()))
    if labels == 1:  # the two classes of a binary task: negative and positive
        y, p = real[:, 0], predicted[:, 0]
        assert got["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
        precision, recall, _, support = precision_recall_fscore_support(y, p)
        assert list(got["per_class"]) == ["negative", "positive"]
    else:  # multi-label: the mean over the labels
        assert got["macro_f1"] == pytest.approx(f1_score(real, predicted, average="macro"))
        precision, recall, _, support = precision_recall_fscore_support(real, predicted)
        assert accuracy_score(real.ravel(), predicted.ravel()) == pytest.approx(got["accuracy"])
    rows = list(got["per_class"].values())
    assert [r["precision"] for r in rows] == pytest.approx(list(precision))
    assert [r["recall"] for r in rows] == pytest.approx(list(recall))
    assert [r["support"] for r in rows] == list(support)


def test_binary_metrics_refuse_shapes_that_differ() -> None:
    with pytest.raises(ShapeError, match=r"\(4, 2\) and labels \(4, 3\)"):
        binary_metrics(torch.zeros(4, 2, dtype=torch.bool), torch.zeros(4, 3, dtype=torch.bool))


# ------------------------------------------------------------------------ a frame-level run


def test_a_frame_level_recipe_trains_and_is_scored_per_frame(frames_project: Path) -> None:
    result = run_recipe(crossdistill.load_recipe(frames_project / "vad.yaml"))
    run = Run(result.run_dir, allow_import=["frame_nets"])  # its models, named by import path
    metrics = run.final_metrics()
    assert {"accuracy", "f1", "macro_f1", "agreement", "teacher_accuracy",
            "teacher_macro_f1"} <= set(metrics)  # fmt: skip
    assert list(metrics["per_class"]) == ["negative", "positive"]
    # the same numbers, by hand, from the saved student and the teacher
    x, y = _clips(48, 1)
    student = run.student().eval()
    with torch.no_grad():
        predicted = student(x)["logits"][..., 0] > 0
    teacher = run.teacher().model(x)[..., 0] > 0.5
    assert metrics["accuracy"] == pytest.approx((predicted == y.bool()).float().mean().item())
    assert metrics["agreement"] == pytest.approx((predicted == teacher).float().mean().item())
    assert metrics["teacher_accuracy"] == pytest.approx((teacher == y.bool()).float().mean().item())
    assert metrics["accuracy"] > 0.8  # the task is learnable in 3 epochs: the losses work


def test_a_recipe_with_a_store_and_no_teacher_trains_as_with_the_teacher(
    frames_project: Path,
) -> None:
    path = frames_project / "vad.yaml"
    store = ["store={path: " + str(frames_project / "store") + ", dtype: float32}"]
    cache_recipe(crossdistill.load_recipe(path, store), progress=False)
    online = run_recipe(crossdistill.load_recipe(path, [*store, "name=online"]))
    alone = crossdistill.load_recipe(path, [*store, "name=alone", "teacher=null"])
    from_store = run_recipe(alone)
    a, b = (Run(r.run_dir, allow_import=["frame_nets"]).student().state_dict()
            for r in (online, from_store))  # fmt: skip
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "agreement" not in from_store.metrics  # no teacher to agree with
    # the store is checked against the data, even with no teacher to check it against
    other = frames_project / "other"
    x, y = _clips(96, 5)
    save_split(Split({"audio": x}, name="train", targets=y), other / "train")
    moved = crossdistill.load_recipe(
        path, [*store, "name=moved", "teacher=null", f"data.params.path={other}"]
    )
    with pytest.raises(StoreError, match="training data"):
        run_recipe(moved)
    with pytest.raises(crossdistill.CrossDistillError, match="nothing to cache"):
        cache_recipe(alone)


def test_a_python_run_from_a_store_records_the_store(frames_project: Path) -> None:
    import frame_nets

    x, y = _clips(64, 0)
    split = Split({"audio": x}, name="clips", targets=y)
    teacher = crossdistill.Teacher(frame_nets.FrameTeacher(), outputs=["probs"])
    store = crossdistill.cache(teacher, split, frames_project / "store", progress=False)
    losses = [("bce_kd", {"teacher": "probs", "teacher_probabilities": True})]
    distill(None, frame_nets.FrameStudent(), split, losses=losses, store=store, epochs=1,
            run_dir=frames_project / "run", **QUIET)  # fmt: skip
    config = Run(frames_project / "run").config
    assert config.teacher is None and config.store.path == Path(store).resolve()


# -------------------------------------------------------- evaluation problems, found first


class LogitsOnly(Loss):
    """A user's loss that reads the student's logits and nothing else."""

    def forward(self, student, teacher, target=None):
        return student["logits"].square().mean()


def test_a_student_the_evaluation_cannot_score_fails_before_training(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    split = Split({"x": torch.randn(32, 6, generator=g)}, name="five",
                  targets=torch.arange(32) % 5, class_names=list("abcde"))  # fmt: skip
    student = nn.Linear(6, 3)  # 3 logits for 5 classes, and no teacher to compare with
    with pytest.raises(ShapeError, match="nothing to evaluate"):
        distill(None, student, split, losses=[LogitsOnly()], eval_data=split,
                run_dir=tmp_path / "run", **QUIET)  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_an_evaluation_that_fails_at_the_end_keeps_the_last_epoch(
    frames_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = ["train.epochs=2", "eval.every_epochs=0"]  # evaluated after the last epoch only
    recipe = crossdistill.load_recipe(frames_project / "vad.yaml", overrides)

    def broken(*args, **kwargs):
        raise RuntimeError("the evaluation broke")

    with monkeypatch.context() as patch:
        patch.setattr("crossdistill.pipeline.evaluate_student", broken)
        with pytest.raises(RuntimeError, match="the evaluation broke"):
            run_recipe(recipe)
    run = Run(recipe.run_dir)
    assert (run.checkpoints / "epoch-0002").is_dir() and not run.student_file.exists()
    finished = run_recipe(recipe, resume=True)  # evaluates, and finishes the run
    assert "macro_f1" in finished.metrics and run.student_file.exists()
