"""``crossdistill.distill()``: the Python entry point on plain modules and a TensorDataset."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import crossdistill
from crossdistill import Student, Teacher, distill
from crossdistill.config import LossSpec
from crossdistill.errors import ConfigError, UnknownNameError
from crossdistill.losses.logit.kd import KDLoss

N = 192
QUIET = {"progress": False, "device": "cpu"}


def _task(seed: int = 0) -> tuple[nn.Module, TensorDataset, torch.Tensor, torch.Tensor]:
    """A fixed linear teacher on 2x2 'images' and the labels it assigns (an easy task)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 1, 2, 2, generator=g)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        teacher[1].weight.copy_(3 * torch.randn(3, 4, generator=g))
        teacher[1].bias.zero_()
        y = teacher(x).argmax(dim=1)
    return teacher, TensorDataset(x, y), x, y


def _student(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def _kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    return temperature**2 * F.kl_div(
        F.log_softmax(s / temperature, 1),
        F.log_softmax(t / temperature, 1),
        log_target=True,
        reduction="batchmean",
    )


def test_distill_trains_and_returns_the_same_student() -> None:
    teacher, data, x, y = _task()
    student = _student()
    teacher_before = copy.deepcopy(teacher.state_dict())
    start = copy.deepcopy(student.state_dict())
    before = _ce(student, x, y)
    out = distill(
        teacher,
        student,
        data,
        losses=["ce", ("kd", {"temperature": 2.0})],
        batch_size=32,
        epochs=5,
        optimizer={"name": "sgd", "lr": 0.2},
        **QUIET,
    )
    assert out.student is student and out.run is None
    assert out.history.train_loss and len(out.history.train_loss) == 5
    assert any(not torch.equal(start[k], v) for k, v in student.state_dict().items())
    after = _ce(student, x, y)
    assert after < 0.5 * before
    with torch.no_grad():
        assert (student(x).argmax(1) == y).float().mean() > 0.9
    # The teacher is frozen and untouched.
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k])
    assert not any(p.requires_grad for p in teacher.parameters())


def test_distill_without_teacher_with_ce_only() -> None:
    _, data, x, y = _task()
    student = _student()
    before = _ce(student, x, y)
    assert (
        distill(
            None,
            student,
            data,
            losses=["ce"],
            batch_size=32,
            epochs=3,
            optimizer={"name": "adamw", "lr": 0.05},
            **QUIET,
        ).student
        is student
    )
    assert _ce(student, x, y) < before


def test_distill_is_reproducible() -> None:
    teacher, data, _, _ = _task()
    a, b = _student(), _student()
    for student in (a, b):
        distill(teacher, student, data, batch_size=32, epochs=2, seed=3, **QUIET)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize(
    ("loss", "term", "factor"),
    [
        ("ce", "ce", None),
        (("kd", {"temperature": 2.0}), "kd", 1.0),
        (("kd", {"temperature": 2.0}, 0.25), "kd", 0.25),
        (KDLoss(temperature=2.0), "KDLoss", 1.0),
        (LossSpec(name="kd", params={"temperature": 2.0}, weight=3.0, label="soft"), "soft", 3.0),
    ],
    ids=["str", "name-params", "name-params-weight", "instance", "spec"],
)
def test_loss_forms(tmp_path: Path, loss: Any, term: str, factor: float | None) -> None:
    teacher, data, x, y = _task()
    student = _student()
    s0, t = student(x).detach(), teacher(x).detach()
    # One full batch, one epoch: the first step record holds the losses at the initial weights.
    distill(
        teacher, student, data, losses=[loss], batch_size=N, epochs=1, run_dir=tmp_path, **QUIET
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["kind"] == "step")
    expected = float(F.cross_entropy(s0, y)) if factor is None else factor * float(_kd(s0, t, 2))
    assert first[term] == pytest.approx(expected, rel=1e-5)
    assert first["loss"] == pytest.approx(expected, rel=1e-5)


def test_distill_with_wrappers_and_eval_data(tmp_path: Path) -> None:
    teacher, data, _, _ = _task()
    model = _student()
    out = distill(
        Teacher(teacher),
        Student(model),
        data,
        eval_data=data,
        batch_size=64,
        epochs=2,
        run_dir=tmp_path,
        **QUIET,
    )
    assert out.student is model and out.run is not None and out.run.path == tmp_path
    assert out.metrics["accuracy"] == out.history.eval[-1]["accuracy"]
    kinds = [
        json.loads(line)["kind"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert kinds.count("eval") == 1 and kinds.count("epoch") == 2  # eval after the last epoch
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] != []


def test_bad_train_setting_names_the_key() -> None:
    teacher, data, _, _ = _task()
    with pytest.raises(ConfigError) as info:
        distill(teacher, _student(), data, epochss=3)
    text = str(info.value)
    assert "train.epochss" in text and "did you mean epochs" in text
    assert "accepted:" in text
    with pytest.raises(ConfigError, match=r"train\.optimizer\.name"):
        distill(teacher, _student(), data, optimizer={"name": "adam"})
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        distill(teacher, _student(), data, epochs=0)


def test_bad_losses_are_refused() -> None:
    teacher, data, _, _ = _task()
    with pytest.raises(UnknownNameError, match="did you mean 'kd'"):
        distill(teacher, _student(), data, losses=["kdd"])
    with pytest.raises(ConfigError, match=r"losses\[1\]\.params\.temprature"):
        distill(teacher, _student(), data, losses=["ce", ("kd", {"temprature": 2.0})])
    with pytest.raises(ConfigError, match="no teacher is configured"):
        distill(None, _student(), data)


def test_a_loss_given_twice_is_logged_under_two_names(tmp_path) -> None:
    import json

    teacher, data, _, _ = _task()
    losses = [("kd", {"temperature": 2.0}), ("kd", {"temperature": 8.0}, 0.5)]
    distill(teacher, _student(), data, losses=losses, epochs=1, progress=False, run_dir=tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in steps if r["kind"] == "step")
    assert {"kd", "kd_2"} <= set(step) and step["kd"] != step["kd_2"]


def test_distill_is_exported() -> None:
    assert crossdistill.distill is distill
    assert set(crossdistill.__all__) >= {"distill", "run_recipe", "load_recipe", "Trainer"}


def test_distill_with_a_feature_loss_through_an_auto_adapter(tmp_path: Path) -> None:
    """docs/cross-architecture.md's Python call: taps on both sides, a dict loss with
    ``adapter: auto``; the adapter is built from the real shapes, trained, and not returned."""
    teacher, data, _, _ = _task()
    model = _student()
    losses = [
        ("ce", {}, 0.5),
        ("kd", {"temperature": 2.0}, 0.5),
        {
            "name": "fitnet",
            "weight": 0.1,
            "adapter": "auto",
            "params": {"student": "features/flat", "teacher": "features/logits"},
        },
    ]
    out = distill(
        Teacher(teacher, taps=[crossdistill.Tap("logits", "1")]),  # (B, 3)
        Student(model, taps=[crossdistill.Tap("flat", "0")]),  # (B, 4): linear 4 → 3
        data,
        losses=losses,
        epochs=2,
        run_dir=tmp_path,
        **QUIET,
    )
    assert out.student is model
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"time": records[0]["time"], "kind": "adapters", "fitnet": "linear"}
    step = next(r for r in records if r["kind"] == "step")
    assert step["fitnet"] > 0
    checkpoint = sorted((tmp_path / "checkpoints").iterdir())[-1]
    from safetensors.torch import load_file

    saved = load_file(str(checkpoint / "trainable.safetensors"))
    assert saved["adapters.fitnet.proj.weight"].shape == (3, 4)
    assert not any("adapter" in k for k in out.student.state_dict())
