"""Device selection, mixed precision and seeding: the machine-dependent parts of a run."""

from __future__ import annotations

import pytest
import torch

from crossdistill import distill
from crossdistill._util.device import amp_dtype, select_device, to_device
from crossdistill.errors import ConfigError
from crossdistill.train.runtime import seed_everything


def test_auto_device_is_cpu_without_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"train\.device is 'cuda'.*not available"):
        select_device("cuda")


def test_amp_modes() -> None:
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None  # mixed precision only by default on CUDA
    assert amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    assert amp_dtype("fp16", cpu) is torch.float16


def test_to_device_moves_nested_batches() -> None:
    batch = {"views": {"student": torch.ones(2)}, "target": [torch.zeros(1)], "id": 3}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["views"]["student"].device.type == "cpu" and moved["id"] == 3


def test_bf16_autocast_training_runs_and_keeps_fp32_weights() -> None:
    """The AMP code path (autocast + loss scaler disabled for bf16) trains on CPU too."""
    seed_everything(0)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 4, (64,))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    before = student[1].weight.detach().clone()
    data = torch.utils.data.TensorDataset(x, y)
    out = distill(teacher, student, data, epochs=2, amp="bf16", progress=False, batch_size=16)
    weight = out.student[1].weight
    assert weight.dtype == torch.float32 and torch.isfinite(weight).all()
    assert not torch.equal(weight, before)


def test_seed_everything_makes_torch_reproducible() -> None:
    seed_everything(5)
    a = torch.rand(3)
    seed_everything(5)
    assert torch.equal(a, torch.rand(3))
