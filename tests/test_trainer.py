"""The Trainer through ``run_recipe`` on the digits recipes: determinism, resume, checkpoints,
non-finite losses, the learning-rate schedule, gradient clipping and metrics.jsonl."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from crossdistill import Distiller, Knowledge, Loss, Student, Term, Trainer, build_loss
from crossdistill.build import build_distiller
from crossdistill.config import Recipe, ScheduleSpec, TrainSpec, load_recipe
from crossdistill.data import load_source
from crossdistill.errors import CheckpointError, ConfigError, NonFiniteLossError
from crossdistill.losses import LOSSES
from crossdistill.pipeline import run_recipe
from crossdistill.runs import Run, load_student
from crossdistill.train.checkpoint import list_checkpoints, load_checkpoint
from crossdistill.train.trainer import lr_factor

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "recipes" / "digits"
STEPS_PER_EPOCH = math.ceil(len(load_source("digits", "train")) / 64)
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}

MakeRecipe = Callable[..., Recipe]


@pytest.fixture
def make_kd(tmp_path: Path, teacher_weights: Path) -> MakeRecipe:
    """The digits KD recipe on the CPU with extra overrides, written under ``tmp_path/runs``."""

    def make(*overrides: str, source: str = "kd.yaml") -> Recipe:
        base = [f"output.dir={tmp_path / 'runs'}", "train.progress=false", "train.device=cpu"]
        if source == "kd.yaml":
            base.append(f"teacher.weights={teacher_weights}")
        return load_recipe(DIGITS / source, overrides=[*base, *overrides])

    return make


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _finals(run_dir: Path) -> None:
    for name in ("student.safetensors", "student.json", "eval.json"):
        (run_dir / name).unlink()


# ------------------------------------------------------------------------------- determinism


def test_same_seed_gives_bit_identical_students(make_kd: MakeRecipe) -> None:
    first = run_recipe(make_kd("name=first"))
    second = run_recipe(make_kd("name=second"))
    assert first.run_dir is not None and second.run_dir is not None
    a = (first.run_dir / "student.safetensors").read_bytes()
    b = (second.run_dir / "student.safetensors").read_bytes()
    assert a == b
    assert first.history.train_loss == second.history.train_loss
    assert first.metrics == second.metrics
    # ... and a different seed gives a different student.
    other = run_recipe(make_kd("name=other", "seed=1"))
    assert other.run_dir is not None
    assert (other.run_dir / "student.safetensors").read_bytes() != a


def test_run_directory_contents_and_reloaded_student(kd_recipe: Recipe) -> None:
    result = run_recipe(kd_recipe)
    run_dir = result.run_dir
    assert run_dir is not None and run_dir == kd_recipe.run_dir and run_dir.name == "digits_kd"
    assert load_recipe(run_dir / "config.yaml") == kd_recipe
    meta = json.loads((run_dir / "student.json").read_text())
    assert meta["model"] == "cnn" and meta["params"]["width"] == 4
    assert meta["parameters"] == sum(p.numel() for p in result.student.parameters())
    evals = json.loads((run_dir / "eval.json").read_text())
    assert evals == {"epoch": 3, **result.metrics}
    assert result.metrics["accuracy"] > 0.5  # learnt something in 3 epochs
    assert 0 <= result.metrics["agreement"] <= 1
    # The saved student alone reproduces the trained student's logits.
    student = load_student(run_dir).eval()
    trained = result.student.cpu().eval()
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        expected = trained(build_distiller(kd_recipe).student.pipeline(x))
        torch.testing.assert_close(student(x)["logits"], expected)


# ------------------------------------------------------------------------------- resume


def test_resume_continues_bit_identically(make_kd: MakeRecipe) -> None:
    recipe = make_kd()
    run_dir = recipe.run_dir
    run_recipe(recipe)
    reference = (run_dir / "student.safetensors").read_bytes()
    reference_eval = json.loads((run_dir / "eval.json").read_text())
    # Simulate a crash during the third epoch: its checkpoint never finished.
    last = run_dir / "checkpoints" / "epoch-0003"
    shutil.rmtree(last)
    leftover = last.with_name("epoch-0003.tmp")
    leftover.mkdir()
    (leftover / "trainable.safetensors").write_bytes(b"half-written")
    _finals(run_dir)
    assert [p.name for p in list_checkpoints(Run(run_dir).checkpoints)] == [
        "epoch-0001",
        "epoch-0002",
    ]

    result = run_recipe(recipe, resume=True)
    assert (run_dir / "student.safetensors").read_bytes() == reference
    assert json.loads((run_dir / "eval.json").read_text()) == reference_eval
    assert len(result.history.train_loss) == 1  # only the third epoch ran again
    assert not leftover.exists()
    epochs = [r["epoch"] for r in _records(run_dir) if r["kind"] == "epoch"]
    assert epochs == [1, 2, 3, 3]


def test_resume_without_checkpoints_starts_from_scratch(make_kd: MakeRecipe) -> None:
    recipe = make_kd("train.epochs=1")
    result = run_recipe(recipe, resume=True)
    assert result.run_dir is not None and (result.run_dir / "student.safetensors").is_file()


def test_resume_is_recorded_in_metrics(make_kd: MakeRecipe) -> None:
    recipe = make_kd("train.epochs=2", source="teacher.yaml")
    run_recipe(recipe)
    shutil.rmtree(recipe.run_dir / "checkpoints" / "epoch-0002")
    _finals(recipe.run_dir)
    run_recipe(recipe, resume=True)
    resumes = [r for r in _records(recipe.run_dir) if r["kind"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["epoch"] == 1


def test_resuming_a_finished_run_keeps_its_metrics(make_kd: MakeRecipe) -> None:
    recipe = make_kd("train.epochs=1", source="teacher.yaml")
    run_recipe(recipe)
    before = json.loads((recipe.run_dir / "eval.json").read_text())
    assert "accuracy" in before
    result = run_recipe(recipe, resume=True)
    assert json.loads((recipe.run_dir / "eval.json").read_text()) == before
    assert result.metrics


def test_resume_with_a_different_recipe_is_refused(make_kd: MakeRecipe) -> None:
    run_recipe(make_kd("train.epochs=2", source="teacher.yaml"))
    changed = make_kd("train.epochs=2", "train.optimizer.lr=0.05", source="teacher.yaml")
    with pytest.raises(CheckpointError, match="different recipe"):
        run_recipe(changed, resume=True)


def test_finished_run_without_checkpoints_cannot_resume(make_kd: MakeRecipe) -> None:
    recipe = make_kd("train.epochs=1", source="teacher.yaml")
    run_recipe(recipe)
    shutil.rmtree(recipe.run_dir / "checkpoints")
    with pytest.raises(ConfigError, match="finished run with no checkpoint"):
        run_recipe(recipe, resume=True)


# ------------------------------------------------------------------------------- checkpoints


def test_checkpoints_are_safetensors_and_json_only(make_kd: MakeRecipe) -> None:
    recipe = make_kd("train.keep_checkpoints=0")
    run_recipe(recipe)
    files = [p for p in recipe.run_dir.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in PICKLE_SUFFIXES]
    assert {p.suffix for p in files} <= {".safetensors", ".json", ".jsonl", ".yaml"}
    for p in files:
        assert not p.read_bytes().startswith(b"\x80"), f"{p} looks like a pickle"
    checkpoints = list_checkpoints(Run(recipe.run_dir).checkpoints)
    assert [p.name for p in checkpoints] == ["epoch-0001", "epoch-0002", "epoch-0003"]
    for ckpt in checkpoints:
        assert sorted(p.name for p in ckpt.iterdir()) == [
            "optimizer.safetensors",
            "rng.safetensors",
            "state.json",
            "trainable.safetensors",
        ]
        trainable = load_file(str(ckpt / "trainable.safetensors"))
        assert trainable and all(
            k.startswith(("student.", "adapters.", "losses.")) for k in trainable
        )  # never the teacher
    state = load_checkpoint(checkpoints[-1])
    assert state["epoch"] == 3 and state["step"] == 3 * STEPS_PER_EPOCH
    assert state["fingerprint"] == recipe.fingerprint()


def test_keep_checkpoints_prunes_old_ones(make_kd: MakeRecipe) -> None:
    recipe = make_kd("train.keep_checkpoints=1", source="teacher.yaml")
    run_recipe(recipe)
    assert [p.name for p in list_checkpoints(Run(recipe.run_dir).checkpoints)] == ["epoch-0003"]


def test_tmp_leftovers_are_not_checkpoints(tmp_path: Path) -> None:
    root = tmp_path / "run" / "checkpoints"
    (root / "epoch-0001").mkdir(parents=True)
    (root / "epoch-0002.tmp").mkdir()
    (root / "epoch-0003").write_text("not a folder")
    assert [p.name for p in list_checkpoints(Run(tmp_path / "run").checkpoints)] == ["epoch-0001"]
    assert list_checkpoints(Run(tmp_path / "nothing").checkpoints) == []


def test_a_killed_writers_tmp_checkpoint_is_removed_at_the_next_save(
    make_kd: MakeRecipe,
) -> None:
    recipe = make_kd("train.epochs=2", "train.keep_checkpoints=0", source="teacher.yaml")
    run_recipe(recipe)
    checkpoints = Run(recipe.run_dir).checkpoints
    shutil.rmtree(checkpoints / "epoch-0002")  # as if killed while writing the second
    stale = checkpoints / "epoch-0001-step-00000031.tmp"  # a mid-epoch one, never written again
    stale.mkdir()
    (stale / "trainable.safetensors").write_bytes(b"half a checkpoint")
    _finals(recipe.run_dir)
    run_recipe(recipe, resume=True)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch-0001", "epoch-0002"]


def _flip_byte(path: Path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_checkpoint_names_the_file(make_kd: MakeRecipe) -> None:
    recipe = make_kd("train.epochs=2", source="teacher.yaml")
    run_recipe(recipe)
    bad = recipe.run_dir / "checkpoints" / "epoch-0002" / "trainable.safetensors"
    _flip_byte(bad)
    with pytest.raises(CheckpointError) as info:
        run_recipe(recipe, resume=True)
    assert str(bad) in str(info.value) and "corrupted" in str(info.value)
    assert "epoch-0002" in str(info.value.hint)


@pytest.mark.parametrize("damage", ["missing-state", "bad-json", "missing-file"])
def test_incomplete_checkpoint_is_refused(make_kd: MakeRecipe, damage: str) -> None:
    recipe = make_kd("train.epochs=1", source="teacher.yaml")
    run_recipe(recipe)
    ckpt = recipe.run_dir / "checkpoints" / "epoch-0001"
    if damage == "missing-state":
        (ckpt / "state.json").unlink()
    elif damage == "bad-json":
        (ckpt / "state.json").write_text('{"epoch": 1,')
    else:
        (ckpt / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="epoch-0001"):
        load_checkpoint(ckpt)


# ------------------------------------------------------------------------------- non-finite


class NanAtStep(Loss):
    """Zero (with a gradient path) except at training forward number ``at``: NaN."""

    needs_student = ("logits",)

    def __init__(self, at: int = 0) -> None:
        super().__init__()
        self.at = at
        self.calls = 0

    def forward(self, student: Knowledge, teacher: Knowledge, target: Any) -> torch.Tensor:
        value = 0.0 * student["logits"].sum()
        hit = self.calls == self.at
        self.calls += 1
        return value + float("nan") if hit else value


@pytest.fixture
def nan_loss(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register :class:`NanAtStep` as ``test_nan_at`` for one test."""
    monkeypatch.setitem(LOSSES._items, "test_nan_at", NanAtStep)
    return "test_nan_at"


def _with_nan_loss(name: str, at: int, label: str = "nan") -> str:
    """An override: the KD recipe's losses plus ``name`` turning NaN at forward ``at``."""
    return (
        f"losses=[{{name: ce, weight: 0.5}}, {{name: kd, weight: 0.5}}, "
        f"{{name: {name}, label: {label}, params: {{at: {at}}}}}]"
    )


def test_non_finite_loss_stops_training(make_kd: MakeRecipe, nan_loss: str) -> None:
    at = STEPS_PER_EPOCH + 5  # in the second epoch, after the first checkpoint
    recipe = make_kd(_with_nan_loss(nan_loss, at, label="boom"))
    with pytest.raises(NonFiniteLossError) as info:
        run_recipe(recipe)
    text = str(info.value)
    assert "['boom']" in text and "epoch 2" in text
    first = recipe.run_dir / "checkpoints" / "epoch-0001"
    assert str(first) in text
    assert list_checkpoints(Run(recipe.run_dir).checkpoints) == [first]
    assert not (recipe.run_dir / "student.safetensors").exists()
    with pytest.raises(CheckpointError, match="has not finished"):
        load_student(recipe.run_dir)
    # The last good checkpoint is intact and loads into the model.
    state = load_checkpoint(first)
    assert state["epoch"] == 1 and state["step"] == STEPS_PER_EPOCH
    distiller = build_distiller(recipe)
    distiller.trainable().load_state_dict(state["trainable"])
    assert all(torch.isfinite(p).all() for p in distiller.student.parameters())
    last = _records(recipe.run_dir)[-1]
    assert last["kind"] == "error" and "boom" in last["error"] and last["step"] == at


def test_non_finite_loss_before_the_first_checkpoint(make_kd: MakeRecipe, nan_loss: str) -> None:
    recipe = make_kd(_with_nan_loss(nan_loss, 2))
    with pytest.raises(NonFiniteLossError, match="none yet"):
        run_recipe(recipe)


# ------------------------------------------------------------------------------- schedule


def _cos(p: float, lo: float = 0.0) -> float:
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * p))


@pytest.mark.parametrize(
    ("spec", "steps", "expected"),
    [
        (ScheduleSpec(name="constant"), [0, 7, 59], [1.0, 1.0, 1.0]),
        (
            ScheduleSpec(name="constant", warmup_epochs=0.5),
            [0, 1, 4, 5, 30],
            [1 / 5, 2 / 5, 1.0, 1.0, 1.0],
        ),
        (
            ScheduleSpec(name="step", milestones=[2, 4], gamma=0.1),
            [0, 19, 20, 39, 40, 59],
            [1.0, 1.0, 0.1, 0.1, 0.01, 0.01],
        ),
        (
            ScheduleSpec(name="step", milestones=[1], gamma=0.5, warmup_epochs=1),
            [0, 9, 10, 25],
            [0.1, 1.0, 0.5, 0.5],
        ),
        (
            ScheduleSpec(name="cosine"),
            [0, 15, 30, 45, 60, 75],
            [1.0, _cos(0.25), 0.5, _cos(0.75), 0.0, 0.0],
        ),
        (ScheduleSpec(name="cosine", min_lr_ratio=0.1), [0, 30, 60], [1.0, 0.55, 0.1]),
        (
            ScheduleSpec(name="cosine", warmup_epochs=1),
            [0, 4, 9, 10, 35, 60],
            [0.1, 0.5, 1.0, 1.0, 0.5, 0.0],
        ),
    ],
    ids=[
        "constant",
        "constant-warmup",
        "step",
        "step-warmup",
        "cosine",
        "cosine-min",
        "cosine-warmup",
    ],
)
def test_lr_factor(spec: ScheduleSpec, steps: list[int], expected: list[float]) -> None:
    # 10 steps per epoch, 6 epochs: 60 steps in all.
    got = [lr_factor(s, spec, steps_per_epoch=10, epochs=6) for s in steps]
    assert got == pytest.approx(expected, abs=1e-12)


class RecordLR(Loss):
    """Cross-entropy that records the optimizer's learning rate at each training forward."""

    needs_student = ("logits",)
    needs_target = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []
        self.optimizer: torch.optim.Optimizer | None = None

    def forward(self, student: Knowledge, teacher: Knowledge, target: Any) -> torch.Tensor:
        assert self.optimizer is not None
        self.seen.append(self.optimizer.param_groups[0]["lr"])
        return nn.functional.cross_entropy(student["logits"], target)


def _batches(n: int, seed: int = 0, scale: float = 1.0) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = scale * torch.randn(8, 4, generator=g)
        out.append(
            {
                "views": {"student": x, "teacher": x},
                "target": torch.randint(0, 3, (8,), generator=g),
            }
        )
    return out


def test_trainer_applies_the_schedule_step_by_step() -> None:
    loss = RecordLR()
    spec = TrainSpec(
        epochs=3,
        device="cpu",
        progress=False,
        optimizer={"name": "sgd", "lr": 0.2},
        schedule={"name": "cosine", "warmup_epochs": 0.5, "min_lr_ratio": 0.05},
    )
    trainer = Trainer(Distiller(Student(nn.Linear(4, 3)), [Term("ce", loss)]), spec)
    loss.optimizer = trainer.optimizer
    history = trainer.fit(_batches(4))
    assert len(history.train_loss) == 3 and trainer.step == 12 and trainer.epoch == 3
    expected = [0.2 * lr_factor(s, spec.schedule, 4, 3) for s in range(12)]
    assert loss.seen == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------- clipping


def _grad_norm(module: nn.Module) -> float:
    grads = [p.grad.flatten() for p in module.parameters() if p.grad is not None]
    return float(torch.cat(grads).norm())


@pytest.mark.parametrize("clip", [None, 0.01, 0.5])
def test_grad_clipping_caps_the_norm(clip: float | None) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    spec = TrainSpec(
        device="cpu",
        progress=False,
        grad_clip=clip,
        optimizer={"name": "sgd", "lr": 1e-3, "momentum": 0.0},
    )
    trainer = Trainer(Distiller(Student(model), [Term("ce", build_loss("ce"))]), spec)
    trainer.train_step(_batches(1, scale=100.0)[0])
    norm = _grad_norm(model)
    if clip is None:
        assert norm > 1.0  # the unclipped gradient is large
    else:
        assert norm == pytest.approx(clip, rel=1e-4)


# ------------------------------------------------------------------------------- metrics


def test_metrics_jsonl_records_terms_epochs_and_evals(make_kd: MakeRecipe) -> None:
    recipe = make_kd("train.log_every=1", "eval.every_epochs=2")
    run_recipe(recipe)
    records = _records(recipe.run_dir)
    assert all({"kind", "time", "epoch", "step"} <= set(r) for r in records)
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    for r in steps:
        assert {"loss", "ce", "kd", "lr"} <= set(r)
        assert r["loss"] == pytest.approx(r["ce"] + r["kd"], rel=1e-5)
        assert r["ce"] >= 0 and r["kd"] >= 0
    assert steps[-1]["loss"] < steps[0]["loss"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [(r["epoch"], r["step"]) for r in epochs] == [
        (e, e * STEPS_PER_EPOCH) for e in (1, 2, 3)
    ]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [2, 3]  # every 2 epochs, and after the last
    for r in evals:
        assert {
            "accuracy",
            "top5_accuracy",
            "ece",
            "teacher_accuracy",
            "agreement",
            "kl_teacher_student",
        } <= set(r)
    assert (
        json.loads((recipe.run_dir / "eval.json").read_text())["accuracy"] == evals[-1]["accuracy"]
    )


def test_log_every_thins_step_records(make_kd: MakeRecipe) -> None:
    recipe = make_kd("train.log_every=10", "train.epochs=1", source="teacher.yaml")
    run_recipe(recipe)
    steps = [r["step"] for r in _records(recipe.run_dir) if r["kind"] == "step"]
    # Batches 0, 10, 20, ... of the epoch, and its last batch.
    expected = sorted({i + 1 for i in range(0, STEPS_PER_EPOCH, 10)} | {STEPS_PER_EPOCH})
    assert steps == expected


def test_trainer_without_run_dir_writes_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    spec = TrainSpec(epochs=2, device="cpu", progress=False)
    trainer = Trainer(Distiller(Student(nn.Linear(4, 3)), [Term("ce", build_loss("ce"))]), spec)
    trainer.fit(_batches(3))
    assert trainer.save() is None
    assert list(tmp_path.iterdir()) == []
