"""Checks before a run folder exists (issue 20): empty data, inputs smaller than the model
accepts, trivial top-k, integer and NaN weights, honest NaN-loss messages, huge IDX headers,
and no run folder left behind by a run that fails before its first checkpoint."""

from __future__ import annotations

import logging
import re
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from crossdistill import distill
from crossdistill.build import preflight
from crossdistill.config import TrainSpec, load_recipe
from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.wrappers import Student, Teacher
from crossdistill.data import read_idx
from crossdistill.data.dataset import as_distill_dataset, example_loader
from crossdistill.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
)
from crossdistill.evaluate import evaluate_student
from crossdistill.losses.logit.kd import KDLoss
from crossdistill.models.registry import load_weights
from crossdistill.models.zoo.cnn import SmallCNN
from crossdistill.pipeline import run_recipe
from crossdistill.runs import Run
from crossdistill.train.trainer import Trainer

DIGITS = Path(__file__).resolve().parent.parent / "recipes" / "digits"
QUIET = {"progress": False, "device": "cpu"}

# A user's data source: `preflight_data:images` (the test's folder is on sys.path).
SOURCE = """
import torch
from crossdistill.data import ArraySplit


def images(split: str, train: int = 8, test: int = 8, size: int = 8):
    n = train if split == "train" else test
    x = torch.randint(0, 255, (n, 1, size, size), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    return ArraySplit(x, torch.arange(n) % 10, [str(i) for i in range(10)], f"images/{split}")
"""


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "preflight_data.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "preflight_data", raising=False)
    return "preflight_data:images"


def _recipe(tmp_path: Path, *overrides: str, source: str = "teacher.yaml") -> Any:
    return load_recipe(
        DIGITS / source,
        overrides=[
            f"output.dir={tmp_path / 'runs'}",
            "train.progress=false",
            "train.device=cpu",
            "train.epochs=1",
            *overrides,
        ],
    )


def _runs(tmp_path: Path) -> list[str]:
    runs = tmp_path / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.exists() else []


def _images(n: int, size: int = 8, classes: int = 10) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 1, size, size, generator=g), torch.arange(n) % classes)


def _mlp(inputs: int, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, classes))


# ------------------------------------------------------------------------ 1. empty data


@pytest.mark.parametrize(
    ("params", "phrase"),
    [
        ("train=0", "the training data (split 'train' of 'preflight_data:images') has no examples"),
        ("test=0", "the evaluation data (split 'test' of 'preflight_data:images') has no exam"),
    ],
)
def test_an_empty_split_of_a_recipe_is_named(
    tmp_path: Path, source: str, params: str, phrase: str
) -> None:
    recipe = _recipe(tmp_path, f"data.source={source}", f"data.params.{params}")
    with pytest.raises(DataError) as info:
        run_recipe(recipe)
    assert phrase in info.value.message and "(0)" in info.value.message
    assert info.value.hint
    assert _runs(tmp_path) == []


def test_empty_data_given_to_distill_is_named() -> None:
    with pytest.raises(DataError, match=r"train_data has no examples \(0\)"):
        distill(None, _mlp(64), _images(0), losses=["ce"], **QUIET)
    with pytest.raises(DataError, match=r"eval_data has no examples \(0\)"):
        distill(None, _mlp(64), _images(8), losses=["ce"], eval_data=_images(0), **QUIET)


def test_a_loader_that_gives_no_batch_is_named() -> None:
    loader = DataLoader(_images(3), batch_size=4, drop_last=True)
    with pytest.raises(DataError, match=r"train_data gives no batch: 3 examples, batch size 4, "):
        distill(None, _mlp(64), loader, losses=["ce"], **QUIET)


# ------------------------------------------------------- 2. inputs smaller than the model takes


@pytest.mark.parametrize(("size", "says"), [(1, "Output size is too small"), (0, "Kernel size")])
def test_images_smaller_than_the_cnn_takes_are_named(
    tmp_path: Path, source: str, size: int, says: str
) -> None:
    recipe = _recipe(tmp_path, f"data.source={source}", f"data.params.size={size}")
    with pytest.raises(ConfigError) as info:
        run_recipe(recipe)
    message = info.value.message
    assert "the student (model 'cnn', a SmallCNN) cannot run on the first batch of the " in message
    assert f"float32 tensor of shape (2, 1, {size}, {size})" in message
    assert says in message and "smaller than the model accepts" in (info.value.hint or "")
    assert _runs(tmp_path) == []


def test_the_side_that_fails_is_named() -> None:
    """A 1x1 image suits the linear student, not the CNN teacher; 8x8 training images with
    1x1 evaluation images fail on the evaluation batch."""
    with pytest.raises(ConfigError, match=r"the teacher \(SmallCNN\) cannot run on the first "
                       r"batch of train_data: its input is a float32 tensor of shape "
                       r"\(2, 1, 1, 1\)"):  # fmt: skip
        distill(SmallCNN(width=4), _mlp(1), _images(4, size=1), **QUIET)
    with pytest.raises(ConfigError, match=r"the student \(SmallCNN\) cannot run on the first "
                       r"batch of eval_data: its input is a float32 tensor of shape "
                       r"\(2, 1, 1, 1\)"):  # fmt: skip
        distill(None, SmallCNN(width=4), _images(4), ["ce"], eval_data=_images(2, 1), **QUIET)


def test_a_long_failure_text_is_cut() -> None:
    class Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("x" * 5000)

    with pytest.raises(ConfigError) as info:
        distill(None, Fails(), _images(4), losses=["ce"], **QUIET)
    assert "ValueError: xxx" in info.value.message and len(info.value.message) < 600


# ------------------------------------------------------------------------ 3. eval.topk


def test_top_k_over_k_or_fewer_classes_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    """Top-5 of 4 classes is 1.0 whatever the student predicts: never reported; said once."""
    teacher, student, data = _mlp(64, 4), _mlp(64, 4), _images(16, classes=4)
    with caplog.at_level(logging.WARNING):
        result = distill(teacher, student, data, eval_data=data, epochs=1, **QUIET)
    assert "agreement" in result.metrics and "accuracy" in result.metrics
    assert "top5_accuracy" not in result.metrics and "agreement_top5" not in result.metrics
    warned = [r.getMessage() for r in caplog.records if "eval.topk is 5" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert "top5_accuracy (4 classes)" in warned[0] and "agreement_top5 (4 classes)" in warned[0]
    # below the class count, both are reported
    batches = [{"views": {"student": x, "teacher": x}, "target": y} for x, y in DataLoader(data)]
    metrics = evaluate_student(Student(student), batches, Teacher(teacher), topk=3)
    assert {"top3_accuracy", "agreement_top3"} <= set(metrics)


def test_a_recipe_topk_of_the_class_count_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        result = run_recipe(_recipe(tmp_path, "eval.topk=10", "data.limit_train=64"))
    assert "eval.topk is 10" in caplog.text and "top10_accuracy (10 classes)" in caplog.text
    assert "top10_accuracy" not in result.metrics and "accuracy" in result.metrics


# ------------------------------------------------------------- 4, 5. integer and NaN weights


def test_integer_weights_into_float_parameters_are_refused(tmp_path: Path) -> None:
    state = {k: v.to(torch.int8) for k, v in SmallCNN(width=4).state_dict().items()}
    save_file(state, str(tmp_path / "int8.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_weights(SmallCNN(width=4), tmp_path / "int8.safetensors", where="teacher.weights")
    message = info.value.message
    assert message.startswith("teacher.weights: ") and "int8.safetensors" in message
    assert "block1.0.0.weight (int8 into float32)" in message and "more" in message
    assert "quantized" in (info.value.hint or "")


def test_nan_weights_are_refused_when_loaded(tmp_path: Path) -> None:
    state = SmallCNN(width=4).state_dict()
    state["fc.weight"][0, 0] = float("nan")
    state["block2.0.0.weight"][0, 0, 0, 0] = float("inf")
    save_file(state, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match=r"NaN or Inf in 2 parameters \(e\.g\. "
                       r"\['block2\.0\.0\.weight', 'fc\.weight'\]\)"):  # fmt: skip
        load_weights(SmallCNN(width=4), tmp_path / "nan.safetensors")


def test_a_nan_teacher_in_a_recipe_fails_before_the_run(tmp_path: Path) -> None:
    state = SmallCNN(width=16).state_dict()
    state["fc.bias"][3] = float("nan")
    save_file(state, str(tmp_path / "teacher.safetensors"))
    recipe = _recipe(
        tmp_path, f"teacher.weights={tmp_path / 'teacher.safetensors'}", source="kd.yaml"
    )
    with pytest.raises(CheckpointError, match=r"teacher\.weights: .* NaN or Inf in 1 param"):
        run_recipe(recipe)
    assert _runs(tmp_path) == []


def test_minus_inf_buffers_load(tmp_path: Path) -> None:
    """Attention masks hold -inf on purpose: only parameters are checked for NaN/Inf."""

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.register_buffer("mask", torch.full((2, 2), float("-inf")).triu(1))

    source, target = Masked(), Masked()
    path = tmp_path / "masked.safetensors"
    save_file(source.state_dict(), str(path))
    load_weights(target, path)
    assert torch.equal(target.fc.weight, source.fc.weight)


def test_nan_parameters_of_a_python_teacher_are_named() -> None:
    teacher = _mlp(64)
    with torch.no_grad():
        teacher[1].weight[2, 5] = float("nan")
    with pytest.raises(ConfigError, match=r"the teacher's parameters \['1\.weight'\] hold NaN"):
        distill(teacher, _mlp(64), _images(8), **QUIET)


def test_a_weights_folder_is_named_from_a_recipe(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, f"teacher.weights={tmp_path}", source="kd.yaml")
    with pytest.raises(CheckpointError, match=r"teacher\.weights: '.*' is a folder, not a "):
        run_recipe(recipe)


# ------------------------------------------------------------- 5. honest NaN-loss messages


def _fit(distiller: Distiller, data: TensorDataset) -> None:
    loader = example_loader(as_distill_dataset(data), 4, True, 0)
    distiller.check(next(iter(loader)))
    Trainer(distiller, TrainSpec(epochs=1, progress=False, device="cpu")).fit(loader)


def _distiller(teacher: nn.Module, student: nn.Module, weight: float = 1.0) -> Distiller:
    return Distiller(Student(student), [Term("kd", KDLoss(), weight)], teacher=Teacher(teacher))


def test_an_infinite_loss_weight_is_named_not_the_lr() -> None:
    distiller = _distiller(_mlp(64), _mlp(64), weight=float("inf"))
    with pytest.raises(NonFiniteLossError) as info:
        _fit(distiller, _images(8))
    assert "the weight of 'kd' is inf" in info.value.message
    assert "lr" not in (info.value.hint or "")
    loader = example_loader(as_distill_dataset(_images(8)), 4, True, 0)
    with pytest.raises(
        ConfigError, match=r"loss weights must be finite numbers, got \{'kd': inf\}"
    ):
        preflight(_distiller(_mlp(64), _mlp(64), float("inf")), loader, None, torch.device("cpu"))


def test_non_finite_inputs_are_named_not_the_lr() -> None:
    data = _images(8)
    data.tensors[0][5, 0, 1, 1] = float("nan")
    with pytest.raises(NonFiniteLossError) as info:
        distill(_mlp(64), _mlp(64), data, **QUIET)
    assert "the student's inputs in this batch hold NaN/Inf" in info.value.message
    assert "the teacher's inputs in this batch hold NaN/Inf" in info.value.message
    assert "lr" not in (info.value.hint or "")


def test_a_teacher_whose_outputs_are_nan_is_named() -> None:
    """Finite parameters, a NaN buffer: the teacher's outputs, not the lr, are to blame."""
    teacher = _mlp(64)
    teacher.register_buffer("scale", torch.tensor(float("nan")))
    teacher.register_forward_hook(lambda module, args, out: out * module.scale)
    with pytest.raises(NonFiniteLossError) as info:
        distill(teacher, _mlp(64), _images(8), **QUIET)
    assert "the teacher's 'logits' on this batch holds NaN/Inf" in info.value.message
    assert "epoch 1, step 1" in info.value.message


def test_a_nan_at_the_first_step_does_not_blame_the_lr() -> None:
    class Overflows(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1)) * float("inf") * 0  # NaN from finite inputs

    with pytest.raises(NonFiniteLossError) as info:
        distill(_mlp(64), Overflows(), _images(8), losses=["kd"], **QUIET)
    message = info.value.message
    assert "no optimizer step had been taken (so not the learning rate)" in message
    assert "the student's outputs or the loss itself" in message
    assert "lr" not in (info.value.hint or "")


# -------------------------------------------------------------------------- 7. IDX headers


def test_a_huge_idx_header_reports_sizes_as_they_are(tmp_path: Path) -> None:
    """Two dimensions of 2**32 - 1 bytes: their product overflows int64 (it read negative)."""
    path = tmp_path / "huge-idx2-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 2**32 - 1, 2**32 - 1) + b"abc")
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = info.value.message
    assert str(path) in message and "(4294967295, 4294967295)" in message
    assert f"{(2**32 - 1) ** 2:,} data bytes" in message
    assert "holds 3 after its 12-byte header (15 bytes)" in message
    assert not re.search(r"-\d", message.replace(str(path), ""))  # no negative byte count


# ------------------------------------------------- 8. no run folder left by an early failure


def test_a_failure_before_the_first_checkpoint_leaves_no_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(self: Trainer, loader: Any, steps: int) -> float:
        raise DataError("the loader failed on purpose")

    monkeypatch.setattr(Trainer, "_train_epoch", fails)
    with pytest.raises(DataError, match="on purpose"):
        run_recipe(_recipe(tmp_path))
    assert _runs(tmp_path) == []
    empty = tmp_path / "given"
    empty.mkdir()
    with pytest.raises(DataError, match="on purpose"):
        distill(None, _mlp(64), _images(8), ["ce"], run_dir=empty, **QUIET)
    assert empty.is_dir() and not any(empty.iterdir())  # the empty folder given stays empty


def test_a_failure_after_a_checkpoint_keeps_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_epoch = Trainer._train_epoch

    def second_fails(self: Trainer, loader: Any, steps: int) -> float:
        if self.epoch == 1:
            raise DataError("the loader failed on purpose")
        return train_epoch(self, loader, steps)

    monkeypatch.setattr(Trainer, "_train_epoch", second_fails)
    with pytest.raises(DataError, match="on purpose"):
        run_recipe(_recipe(tmp_path, "train.epochs=2", "data.limit_train=64"))
    run = Run(tmp_path / "runs" / "digits_teacher")
    assert [p.name for p in run.checkpoint_list()] == ["epoch-0001"]


def test_an_interruption_before_the_first_checkpoint_keeps_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C is not a failure: the folder stays for --resume, as the message says."""

    def interrupted(self: Trainer, loader: Any, steps: int) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(_recipe(tmp_path))
    assert _runs(tmp_path) == ["digits_teacher"]
