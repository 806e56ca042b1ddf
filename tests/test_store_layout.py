"""A knowledge store trains the same student as the teacher online, bit for bit, also when the
data's tensors are laid out unusually: a channel axis of size 1 with stride 1 (as a NumPy
``[:, None]`` of a transposed array gives) once made the batched gather keep that layout, on
which a convolution rounded differently than on the store's collated batches."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import crossdistill
from crossdistill.data.split import ArraySplit

QUIET = {"progress": False, "device": "cpu"}


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    )  # fmt: skip


def test_a_store_equals_online_on_data_with_odd_strides(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(96, 8, 8, 1, generator=g).permute(0, 3, 1, 2)  # (96, 1, 8, 8)
    assert images.stride() == (64, 1, 8, 1)
    split = ArraySplit(images, torch.arange(96) % 3, ["a", "b", "c"], "odd")
    torch.manual_seed(1)
    teacher = _cnn()
    store = crossdistill.cache(teacher, split, tmp_path / "store", dtype="float32", progress=False)
    trained = []
    for given in ({"teacher": teacher}, {"teacher": None, "store": store}):
        torch.manual_seed(2)
        student = _cnn()
        crossdistill.distill(
            given.pop("teacher"), student, split, losses=["kd"], epochs=2, batch_size=32,
            **given, **QUIET,
        )  # fmt: skip
        trained.append(student.state_dict())
    for key, value in trained[0].items():
        assert torch.equal(value, trained[1][key]), key
