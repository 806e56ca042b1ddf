"""Momentum (EMA) teachers: the update against a hand computation (warm-up included), a teacher
the optimizer never sees, exact resume of student and teacher, an export of the student alone,
and the recipe errors before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import rewind_run, same_tensors
from crossdistill import Student, Trainer
from crossdistill.build import build_distiller
from crossdistill.config import Recipe, TeacherSpec, TrainSpec, load_recipe
from crossdistill.core.ema import EMATeacher
from crossdistill.core.taps import Tap
from crossdistill.errors import ConfigError
from crossdistill.pipeline import run_recipe
from crossdistill.runs import Run
from crossdistill.train.checkpoint import EMA_TEACHER, list_checkpoints, load_checkpoint

DIGITS = Path(__file__).resolve().parent.parent / "recipes" / "digits"
EMA = "teacher={ema_of: student, decay: 0.9}"


def _student() -> Student:
    torch.manual_seed(0)
    return Student(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))


def _shift(model: nn.Module, by: float) -> None:
    """Move every parameter and BatchNorm statistic of ``model`` by ``by``; count a batch."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(by)
        bn = model[1]
        bn.running_mean.add_(by)
        bn.running_var.add_(by)
        bn.num_batches_tracked.add_(1)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------- the update


def test_warmup_decay_is_tensorflows_num_updates_rule() -> None:
    teacher = EMATeacher(_student(), decay=0.9)
    # min(decay, (1 + t) / (10 + t)): 0.1 at the first update, 0.5 at t = 8, then the decay
    got = [float(teacher.decay_at(t)) for t in (0, 1, 8, 80, 10_000)]
    assert got == pytest.approx([0.1, 2 / 11, 0.5, 0.9, 0.9])
    plain = EMATeacher(_student(), decay=0.9, warmup=False)
    assert float(plain.decay_at(0)) == pytest.approx(0.9)


@pytest.mark.parametrize("warmup", [True, False])
def test_update_equals_a_hand_computation(warmup: bool) -> None:
    student = _student()
    teacher = EMATeacher(student, decay=0.9, warmup=warmup)
    old = _state(teacher.model)
    for t in range(3):
        _shift(student.model, 0.5 * (t + 1))
        new = _state(student.model)
        teacher.update(student.model)
        d = min(0.9, (1 + t) / (10 + t)) if warmup else 0.9
        for key, value in teacher.model.state_dict().items():
            if key.endswith("num_batches_tracked"):  # an integer buffer: copied
                assert torch.equal(value, new[key])
            else:  # weights and BatchNorm statistics: averaged with the same decay
                expected = d * old[key] + (1 - d) * new[key]
                torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
        assert int(teacher.updates) == t + 1
        old = _state(teacher.model)


def test_a_skipped_step_moves_nothing() -> None:
    student = _student()
    teacher = EMATeacher(student, decay=0.9)
    before = _state(teacher)
    _shift(student.model, 1.0)
    teacher.update(student.model, skipped=torch.tensor(True))
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    teacher.update(student.model, skipped=torch.tensor(False))
    assert int(teacher.updates) == 1
    assert not torch.equal(teacher.model[0].weight, before["model.0.weight"])


def test_the_teacher_is_a_frozen_copy_that_does_not_record_the_students_taps() -> None:
    torch.manual_seed(0)
    student = Student(
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        taps=[Tap(name="hidden", path="1")],
    )
    teacher = EMATeacher(student, decay=0.99, taps=[Tap(name="first", path="0")])
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.model.training
    shared = {p.data_ptr() for p in student.parameters()}
    assert not shared & {p.data_ptr() for p in teacher.parameters()}
    x = torch.randn(5, 3)
    out = teacher(x)
    assert set(out) == {"logits", "features/first"}  # its own tap, not the student's
    assert student._recorder is not None and student._recorder.pop() == {}
    assert set(student(x)) == {"logits", "features/hidden"}


# ------------------------------------------------------------------------------- training


def _recipe(tmp_path: Path, *overrides: str) -> Recipe:
    return load_recipe(
        DIGITS / "kd.yaml",
        overrides=[
            f"output.dir={tmp_path / 'runs'}",
            EMA,
            "train.progress=false",
            "train.device=cpu",
            "train.epochs=2",
            *overrides,
        ],
    )


def test_the_optimizer_never_sees_the_teacher(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    distiller = build_distiller(recipe)
    assert isinstance(distiller.teacher, EMATeacher)
    batch = {"views": {"teacher": torch.rand(8, 1, 8, 8)}, "target": torch.arange(8) % 10}
    batch["views"]["student"] = batch["views"]["teacher"]
    distiller.check(batch)
    trainer = Trainer(distiller, TrainSpec(device="cpu", progress=False))
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in distiller.teacher.parameters()}
    assert not any(k.startswith("teacher") for k in distiller.trainable().state_dict())
    before = _state(distiller.teacher.model)
    trainer.train_step(batch)
    # the teacher moved towards the student by the first update's weight (0.9), no further
    student, teacher = distiller.student.model, distiller.teacher.model
    assert int(distiller.teacher.updates) == 1
    for (key, s), t in zip(
        student.state_dict().items(), teacher.state_dict().values(), strict=True
    ):
        if s.is_floating_point():
            torch.testing.assert_close(t, 0.1 * before[key] + 0.9 * s, rtol=1e-6, atol=1e-6)
    pairs = zip(student.parameters(), teacher.parameters(), strict=True)
    assert any(not torch.equal(s, t) for s, t in pairs)
    assert all(p.grad is None for p in distiller.teacher.parameters())


def test_the_momentum_teacher_reads_the_students_view(tmp_path: Path) -> None:
    """Per-side data (the teacher's view another input): the average of the student's model
    reads the student's input, in training, in the trainer's teacher pass and in evaluation."""
    from crossdistill.evaluate.evaluators import _teacher_knowledge

    distiller = build_distiller(_recipe(tmp_path))
    image = torch.rand(8, 1, 8, 8)
    other = torch.rand(8, 3, 5)  # what a teacher of another modality would read: no CNN input
    batch = {"views": {"teacher": other, "student": image}, "target": torch.arange(8) % 10}
    distiller.check(batch)
    trainer = Trainer(distiller, TrainSpec(device="cpu", progress=False))
    trainer.train_step(batch)
    expected = distiller.teacher(image)["logits"]
    with torch.no_grad():
        given = trainer._with_teacher_knowledge(batch)["knowledge"]["logits"]
        torch.testing.assert_close(given, expected)
        torch.testing.assert_close(_teacher_knowledge(batch, distiller.teacher)["logits"], expected)


def test_interrupted_run_resumes_student_and_teacher_bit_identically(tmp_path: Path) -> None:
    whole = run_recipe(_recipe(tmp_path, "name=whole"))
    assert whole.run_dir is not None
    recipe = _recipe(
        tmp_path, "name=cut", "train.checkpoint_every_steps=7", "train.keep_checkpoints=0"
    )
    run_dir = recipe.run_dir
    run_recipe(recipe)
    rewind_run(run_dir, "epoch-0001-step")  # mid-way through the second epoch
    run_recipe(recipe, resume=True)

    assert same_tensors(whole.run_dir / "student.safetensors", run_dir / "student.safetensors")
    last = [list_checkpoints(Run(d).checkpoints)[-1] for d in (whole.run_dir, run_dir)]
    ta, tb = (load_checkpoint(p)["teacher"] for p in last)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    steps = load_checkpoint(last[0])["step"]
    assert int(ta["updates"]) == steps > 0  # one update per optimizer step
    # the average is not the student: the resumed teacher is a state of its own
    a = load_file(whole.run_dir / "student.safetensors")
    assert any(not torch.equal(ta[f"model.{k}"], a[k]) for k in a)


def test_the_export_holds_the_student_alone(tmp_path: Path) -> None:
    result = run_recipe(_recipe(tmp_path, "name=export", "train.epochs=1"))
    assert result.run_dir is not None
    exported = load_file(result.run_dir / "student.safetensors")
    assert exported.keys() == result.student.state_dict().keys()
    assert "updates" not in exported and not any("teacher" in k for k in exported)
    checkpoint = list_checkpoints(Run(result.run_dir).checkpoints)[-1]
    assert (checkpoint / EMA_TEACHER).is_file()
    assert not any(k.startswith("teacher") for k in load_file(checkpoint / "trainable.safetensors"))
    assert "agreement" in result.metrics  # evaluated against the average
    # the finished run gives its average back (crossdistill eval reports agreement with it)
    teacher = Run(result.run_dir).teacher()
    average = load_checkpoint(checkpoint)["teacher"]
    assert isinstance(teacher, EMATeacher) and int(teacher.updates) == int(average["updates"])
    mine = teacher.state_dict()
    assert all(torch.equal(mine[k], average[k]) for k in average)
    assert any(not torch.equal(mine[f"model.{k}"], v) for k, v in exported.items())


def test_a_resume_without_the_teachers_state_is_refused(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "name=lost", "train.epochs=1")
    run_recipe(recipe)
    checkpoint = list_checkpoints(Run(recipe.run_dir).checkpoints)[-1]
    (checkpoint / EMA_TEACHER).unlink()
    state = (checkpoint / "state.json").read_text().replace(EMA_TEACHER, "gone")
    (checkpoint / "state.json").write_text(state)
    for name in ("student.safetensors", "student.json", "eval.json"):
        (recipe.run_dir / name).unlink()
    with pytest.raises(Exception, match="holds no momentum teacher"):
        run_recipe(recipe, resume=True)


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("decay", ["0", "1", "1.5", "-0.1"])
def test_a_decay_outside_0_1_is_refused(tmp_path: Path, decay: str) -> None:
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        _recipe(tmp_path, f"teacher.decay={decay}")


def test_ema_of_with_a_model_is_refused() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        TeacherSpec(model="cnn", ema_of="student")
    with pytest.raises(ValueError, match="student's own model"):
        TeacherSpec(ema_of="student", params={"width": 4})
    with pytest.raises(ValueError, match="momentum teacher"):
        TeacherSpec(model="cnn", decay=0.9)


def test_ema_of_with_a_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to cache"):  # when the recipe is read
        _recipe(tmp_path, f"store={{path: {tmp_path / 'store'}}}")


def test_a_run_config_with_a_momentum_teacher_loads_again(tmp_path: Path) -> None:
    """config.yaml holds every key (params: {}, outputs: [logits]): it must validate again;
    a teacher of another kind dumps without the momentum keys (fingerprints unchanged)."""
    spec = TeacherSpec(ema_of="student", decay=0.99)
    assert TeacherSpec(**spec.model_dump()) == spec
    assert "decay" not in TeacherSpec(model="cnn").model_dump()


def test_a_step_the_loss_scaler_skips_does_not_move_the_teacher(tmp_path: Path) -> None:
    """fp16 loss scaling skips a step whose gradients overflow: the teacher stays, uncounted
    (a CPU GradScaler stands in for CUDA's; an infinite gradient for the overflow)."""
    distiller = build_distiller(_recipe(tmp_path))
    x = torch.rand(8, 1, 8, 8)
    batch = {"views": {"teacher": x, "student": x}, "target": torch.arange(8) % 10}
    distiller.check(batch)
    trainer = Trainer(distiller, TrainSpec(device="cpu", progress=False))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    assert isinstance(distiller.teacher, EMATeacher)
    before = _state(distiller.teacher)
    weight = next(distiller.student.parameters())
    hook = weight.register_hook(lambda g: g * float("inf"))
    trainer.train_step(batch)
    after = distiller.teacher.state_dict()
    assert trainer.scaler.get_scale() < 2.0**8  # the scaler did skip it
    assert all(torch.equal(before[k], after[k]) for k in before)
    hook.remove()
    trainer.train_step(batch)
    assert int(distiller.teacher.updates) == 1
