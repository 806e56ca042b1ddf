"""Loss schedules (a recipe's ``schedule:``): the annealed values, their checks before training,
the Trainer's step log, exact resume, and no recompiles under ``train.compile``."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import rewind_run, same_tensors
from crossdistill import Distiller, Knowledge, Loss, Student, Term, Trainer, build_loss
from crossdistill.build import build_distiller
from crossdistill.config import AnnealSpec, Recipe, TrainSpec, load_recipe
from crossdistill.core.anneal import anneal
from crossdistill.core.wrappers import Teacher
from crossdistill.errors import ConfigError
from crossdistill.pipeline import run_recipe

DIGITS = Path(__file__).resolve().parent.parent / "recipes" / "digits"

# ------------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        # p = 0, 0.25, 0.5, 0.75, 1 over the whole run, from 8 to 2
        ("linear", [8.0, 6.5, 5.0, 3.5, 2.0]),
        ("cosine", [8.0, 5 + 3 * math.cos(math.pi / 4), 5.0, 5 - 3 * math.cos(math.pi / 4), 2.0]),
        ("step", [8.0, 8.0, 8.0, 8.0, 2.0]),
    ],
)
def test_values_along_each_shape(shape: str, expected: list[float]) -> None:
    spec = AnnealSpec(start=8, end=2, shape=shape)
    got = [anneal(spec, p) for p in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[0] == 8.0 and got[-1] == 2.0  # exactly, no rounding at the ends


@pytest.mark.parametrize("shape", ["linear", "cosine", "step"])
def test_values_in_a_window(shape: str) -> None:
    spec = AnnealSpec(start=0, end=1, shape=shape, over=(0.2, 0.6))
    assert anneal(spec, 0.0) == anneal(spec, 0.2) == 0.0  # before the window: start
    assert anneal(spec, 0.6) == anneal(spec, 0.9) == anneal(spec, 1.0) == 1.0  # after: end
    middle = {"linear": 0.5, "cosine": 0.5, "step": 0.0}[shape]
    assert anneal(spec, 0.4) == pytest.approx(middle, abs=1e-12)
    quarter = {"linear": 0.25, "cosine": (1 - math.cos(math.pi / 4)) / 2, "step": 0.0}[shape]
    assert anneal(spec, 0.3) == pytest.approx(quarter, abs=1e-12)


# ------------------------------------------------------------------------------- checks


class _Logits(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": 2 * x[:, :3]}


def _distiller(*terms: Term) -> Distiller:
    torch.manual_seed(0)
    return Distiller(Student(nn.Linear(4, 3)), list(terms), teacher=Teacher(_Logits()))


def _kd(**schedule: AnnealSpec) -> Term:
    return Term("kd", build_loss("kd", {"temperature": 4.0}), 1.0, None, schedule)


def test_an_unknown_key_names_the_term_and_what_it_can_schedule() -> None:
    with pytest.raises(ConfigError) as info:
        _distiller(_kd(temp=AnnealSpec(start=8, end=2)))
    message = str(info.value)
    assert "loss 'kd'" in message and "'temp'" in message
    assert "it can schedule: weight, temperature" in message
    # a constructor parameter that is not a number the loss keeps is no schedule key either
    with pytest.raises(ConfigError, match="'student', which is not a number"):
        _distiller(_kd(student=AnnealSpec(start=1, end=2)))


@pytest.mark.parametrize(
    ("term", "message"),
    [
        (_kd(temperature=AnnealSpec(start=8, end=0)), "temperature.end = 0.0: a temperature"),
        (_kd(temperature=AnnealSpec(start=-1, end=2)), "temperature.start = -1.0"),
        (_kd(weight=AnnealSpec(start=-1, end=1)), "weight.start = -1.0 must be a finite number"),
        # the loss's own check, asked by building it again with the scheduled value
        (
            Term("dkd", build_loss("dkd"), 1.0, None, {"beta": AnnealSpec(start=8, end=-1)}),
            "loss 'dkd': schedule beta.end = -1.0: loss 'dkd': beta must be a finite number",
        ),
    ],
)
def test_values_the_loss_refuses_fail_before_training(term: Term, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _distiller(term)


class _Scaled(Loss):
    """Uses its number where only a Python float will do."""

    needs_student = ("logits",)

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, student: Knowledge, teacher: Knowledge, target: Any) -> torch.Tensor:
        return student["logits"].sum() * float.__mul__(self.scale, 1.0)


def test_a_loss_that_cannot_take_a_tensor_says_so_before_training() -> None:
    term = Term("scaled", _Scaled(), 1.0, None, {"scale": AnnealSpec(start=1, end=2)})
    distiller = Distiller(Student(nn.Linear(4, 3)), [term])
    with pytest.raises(ConfigError, match=r"loss 'scaled' failed with its scheduled \['scale'\]"):
        distiller.check(_batches(1)[0])


def test_a_recipe_schedule_reaches_the_distiller(tmp_path: Path, teacher_weights: Path) -> None:
    recipe = load_recipe(
        DIGITS / "kd.yaml",
        overrides=[
            f"output.dir={tmp_path}",
            f"teacher.weights={teacher_weights}",
            "losses.1.schedule={temperature: {start: 8, end: 2}}",
            "losses.0.schedule={weight: {start: 0, end: 1, over: [0, 0.5]}}",
        ],
    )
    distiller = build_distiller(recipe)
    assert distiller.scheduled_values == {"schedule/kd/temperature": 8.0, "schedule/ce/weight": 0.0}
    distiller.set_progress(0.25)
    assert float(distiller.losses["kd"].temperature) == 6.5
    assert distiller.weights["ce"] == 0.5
    bad = recipe.model_copy(
        update={
            "losses": [
                recipe.losses[0],
                recipe.losses[1].model_copy(
                    update={"schedule": {"tau": AnnealSpec(start=8, end=2)}}
                ),
            ]
        }
    )
    with pytest.raises(ConfigError, match="loss 'kd': its schedule names 'tau'"):
        build_distiller(bad)


def test_scheduled_values_are_buffers_out_of_checkpoints() -> None:
    plain = _distiller(_kd(), Term("ce", build_loss("ce")))
    scheduled = _distiller(
        _kd(temperature=AnnealSpec(start=8, end=2), weight=AnnealSpec(start=0, end=1)),
        Term("ce", build_loss("ce")),
    )
    # an unscheduled loss is untouched: its number stays a Python float
    assert isinstance(plain.losses["kd"].temperature, float)
    assert isinstance(scheduled.losses["kd"].temperature, torch.Tensor)
    # a checkpoint of a scheduled run has the keys of an unscheduled one (and loads into it)
    assert plain.trainable().state_dict().keys() == scheduled.trainable().state_dict().keys()
    batch = _batches(1)[0]
    assert float(scheduled(batch)[1]["kd"].detach()) == 0.0  # weight 0 at the start
    scheduled.set_progress(1.0)
    plain.load_state_dict(scheduled.state_dict())
    scheduled.losses["kd"].temperature.fill_(4.0)  # the plain loss's temperature, weight 1
    torch.testing.assert_close(scheduled(batch)[1]["kd"], plain(batch)[1]["kd"])


# ------------------------------------------------------------------------------- training


def _batches(n: int, seed: int = 0) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(8, 4, generator=g)
        out.append({"views": {"student": x, "teacher": x}, "target": torch.randint(0, 3, (8,))})
    return out


@dataclass
class _Out:
    root: Path

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"


def _records(path: Path, kind: str = "step") -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["kind"] == kind]


def test_the_step_log_shows_the_scheduled_values(tmp_path: Path) -> None:
    spec = AnnealSpec(start=8, end=2, shape="cosine")
    weight = AnnealSpec(start=0.5, end=1.0, over=(0.0, 0.5))
    distiller = _distiller(_kd(temperature=spec, weight=weight), Term("ce", build_loss("ce")))
    train = TrainSpec(epochs=3, device="cpu", progress=False, log_every=1)
    Trainer(distiller, train, run=_Out(tmp_path)).fit(_batches(4))
    steps = _records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in steps] == list(range(1, 13))
    # the record of step s carries the values that step trained with: progress (s - 1) / 12
    temps = [r["schedule/kd/temperature"] for r in steps]
    assert temps == [anneal(spec, (r["step"] - 1) / 12) for r in steps]
    assert temps[0] == 8.0 and all(a > b for a, b in itertools.pairwise(temps))
    assert [r["schedule/kd/weight"] for r in steps][:7] == pytest.approx(
        [0.5 + 0.5 * s / 6 for s in range(7)]
    )
    assert not any(k.startswith("schedule/ce") for k in steps[0])  # only scheduled things


MakeRecipe = Callable[..., Recipe]


@pytest.fixture
def make_scheduled(tmp_path: Path, teacher_weights: Path) -> MakeRecipe:
    """The digits KD recipe with an annealed temperature and kd weight, on the CPU."""

    def make(*overrides: str) -> Recipe:
        base = [
            f"output.dir={tmp_path / 'runs'}",
            f"teacher.weights={teacher_weights}",
            "train.progress=false",
            "train.device=cpu",
            "train.log_every=5",
            "losses.1.schedule={temperature: {start: 8, end: 1, shape: cosine}, "
            "weight: {start: 0.1, end: 0.9, over: [0.2, 0.7]}}",
        ]
        return load_recipe(DIGITS / "kd.yaml", overrides=[*base, *overrides])

    return make


def test_resumed_scheduled_run_is_bit_identical(make_scheduled: MakeRecipe) -> None:
    """Interrupted mid-way through the last epoch and resumed: the same student, bit for bit,
    and the same temperatures logged as the run that was never interrupted."""
    whole = run_recipe(make_scheduled("name=whole"))
    assert whole.run_dir is not None
    steps = _records(whole.run_dir / "metrics.jsonl")
    temps = [r["schedule/kd/temperature"] for r in steps]
    assert temps[0] == 8.0 and temps[-1] < 1.1 and len(set(temps)) == len(temps)

    recipe = make_scheduled(
        "name=cut", "train.checkpoint_every_steps=10", "train.keep_checkpoints=0"
    )
    run_dir = recipe.run_dir
    run_recipe(recipe)
    rewind_run(run_dir, "epoch-0002-step")  # mid-way through the third epoch
    run_recipe(recipe, resume=True)

    student = "student.safetensors"
    assert same_tensors(whole.run_dir / student, run_dir / student)
    # the steps trained again after resuming are logged twice, with the same values
    logged = _records(run_dir / "metrics.jsonl")
    assert len(logged) > len(steps)
    by_step = {r["step"]: r["schedule/kd/temperature"] for r in steps}
    assert all(by_step[r["step"]] == r["schedule/kd/temperature"] for r in logged)


def test_compiled_scheduled_step_does_not_recompile() -> None:
    """A schedule changes its values each step as 0-dim tensors: one graph for the whole run
    (a Python float attribute that changed would be a guard, and recompile)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    spec = AnnealSpec(start=8, end=2)
    distiller = _distiller(
        _kd(temperature=spec, weight=AnnealSpec(start=0.5, end=1.0)), Term("ce", build_loss("ce"))
    )
    train = TrainSpec(epochs=2, device="cpu", progress=False, compile={"backend": "aot_eager"})
    trainer = Trainer(distiller, train)
    trainer.fit(_batches(3))
    assert trainer.compiled.active and trainer.step == 6
    assert counters["stats"]["unique_graphs"] == 1
    assert float(distiller.losses["kd"].temperature) == anneal(spec, 5 / 6)
