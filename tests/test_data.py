"""Data sources, distillation examples and the epoch-seeded loader."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from crossdistill.data import (
    DATA_SOURCES,
    ArraySplit,
    DistillDataset,
    as_distill_dataset,
    build_augmentation,
    example_loader,
    load_source,
)
from crossdistill.data.dataset import EpochSampler
from crossdistill.data.sources import digits as digits_source
from crossdistill.errors import ConfigError, DataError, UnknownNameError

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


def test_registry() -> None:
    assert {"digits", "fashion_mnist"} <= set(DATA_SOURCES.names())
    with pytest.raises(UnknownNameError, match="fashion_mnsit"):
        load_source("fashion_mnsit", "train")
    with pytest.raises(ConfigError, match="bogus"):
        load_source("digits", "train", bogus=1)


@pytest.mark.parametrize("name", ["digits", "fashion_mnist"])
def test_unknown_split_lists_valid_ones(name: str) -> None:
    with pytest.raises(DataError, match="validation") as info:
        load_source(name, "validation")
    assert "train, test" in str(info.value)


def test_array_split_checks_lengths() -> None:
    with pytest.raises(DataError, match="3 in field 'input', 2 targets"):
        ArraySplit(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.int64), ["a"], "x/train")


# -- Fashion-MNIST -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion() -> dict[str, ArraySplit]:
    if not FASHION_ROOT.is_dir():
        pytest.skip(
            f"{FASHION_ROOT} is absent: install it with"
            " `sudo apt-get install -y dataset-fashion-mnist`"
        )
    return {split: load_source("fashion_mnist", split) for split in ("train", "test")}


def test_fashion_mnist_splits(fashion: dict[str, ArraySplit]) -> None:
    for split, n in (("train", 60000), ("test", 10000)):
        data = fashion[split]
        assert len(data) == n
        assert data.name == f"fashion_mnist/{split}"
        assert data.inputs.shape == (n, 1, 28, 28)
        assert data.inputs.dtype == torch.uint8
        assert data.targets.dtype == torch.int64
        assert data.targets.min() >= 0 and data.targets.max() <= 9
        assert set(data.targets.tolist()) == set(range(10))
        assert data.num_classes == 10
    assert fashion["train"].class_names[9] == "Ankle boot"
    assert fashion["train"].class_names[0] == "T-shirt/top"


def test_fashion_mnist_first_label_matches_file(fashion: dict[str, ArraySplit]) -> None:
    # Read the label file by hand: 8-byte header (magic, count), then one byte per label.
    with gzip.open(FASHION_ROOT / "train-labels-idx1-ubyte.gz", "rb") as f:
        header = f.read(8)
        first = f.read(1)[0]
    assert header[:4] == b"\x00\x00\x08\x01"
    assert int.from_bytes(header[4:], "big") == 60000
    assert first == 9
    assert int(fashion["train"].targets[0]) == 9
    assert fashion["train"].class_names[first] == "Ankle boot"


def test_fashion_mnist_first_image_matches_file(fashion: dict[str, ArraySplit]) -> None:
    with gzip.open(FASHION_ROOT / "t10k-images-idx3-ubyte.gz", "rb") as f:
        f.read(16)
        first = np.frombuffer(f.read(28 * 28), dtype=np.uint8).reshape(28, 28)
    assert np.array_equal(fashion["test"].inputs[0, 0].numpy(), first)


def test_fashion_mnist_is_cached(fashion: dict[str, ArraySplit]) -> None:
    again = load_source("fashion_mnist", "train")
    assert again.inputs.data_ptr() == fashion["train"].inputs.data_ptr()


def test_fashion_mnist_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as info:
        load_source("fashion_mnist", "test", root=str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_fashion_mnist_count_mismatch(tmp_path: Path) -> None:
    def idx(array: np.ndarray) -> bytes:
        dims = b"".join(int(s).to_bytes(4, "big") for s in array.shape)
        return bytes([0, 0, 8, array.ndim]) + dims + array.tobytes()

    images = np.zeros((3, 28, 28), np.uint8)
    labels = np.zeros(2, np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(images)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(labels)))
    with pytest.raises(DataError, match=r"3 images.*2 labels"):
        load_source("fashion_mnist", "test", root=str(tmp_path))


# -- digits --------------------------------------------------------------------------------------


def test_digits_split() -> None:
    train, test = load_source("digits", "train"), load_source("digits", "test")
    assert len(train) + len(test) == 1797
    assert len(test) == round(1797 * 0.2)
    assert train.inputs.shape[1:] == (1, 8, 8) and train.inputs.dtype == torch.uint8
    assert int(train.inputs.max()) == 255 and int(train.inputs.min()) == 0
    assert train.targets.dtype == torch.int64 and set(train.targets.tolist()) == set(range(10))
    assert train.name == "digits/train" and train.num_classes == 10

    idx = digits_source.split_indices(1797, 0.2, 0)
    assert not set(idx["train"]) & set(idx["test"])
    assert sorted([*idx["train"], *idx["test"]]) == list(range(1797))
    assert len(idx["train"]) == len(train) and len(idx["test"]) == len(test)


def test_digits_deterministic_and_seeded() -> None:
    a, b = load_source("digits", "train"), load_source("digits", "train")
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    c = load_source("digits", "train", seed=1)
    assert not torch.equal(a.targets, c.targets)
    smaller = load_source("digits", "test", test_fraction=0.5)
    assert len(smaller) == round(1797 * 0.5)
    with pytest.raises(ConfigError, match="test_fraction"):
        load_source("digits", "test", test_fraction=1.0)


def test_digits_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    digits_source._load_all.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    try:
        with pytest.raises(DataError, match="scikit-learn") as info:
            load_source("digits", "train")
        assert info.value.hint == "pip install scikit-learn"
    finally:
        digits_source._load_all.cache_clear()


# -- examples and loaders ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_train() -> ArraySplit:
    return load_source("digits", "train")


def test_example_structure(digits_train: ArraySplit) -> None:
    ds = DistillDataset(digits_train, build_augmentation({"name": "crop_flip"}), seed=0)
    ex = ds[5]
    assert set(ex) == {"id", "views", "target", "aug"}
    assert ex["id"] == 5
    assert set(ex["views"]) == {"teacher", "student"}
    x = ex["views"]["teacher"]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(ex["views"]["student"], x)
    assert ex["target"].dtype == torch.int64 and ex["target"].dim() == 0
    assert int(ex["target"]) == int(digits_train.targets[5])
    assert ex["aug"].dtype == torch.float32 and ex["aug"].shape == (3,)
    assert ds[-1]["id"] == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_example_without_augmentation(digits_train: ArraySplit) -> None:
    ds = DistillDataset(digits_train, views=("student",))
    ex = ds[0]
    assert ex["aug"].shape == (0,)
    assert set(ex["views"]) == {"student"}
    assert torch.equal(ex["views"]["student"], digits_train.inputs[0].float() / 255)
    assert ds.num_classes == 10


def batches(loader) -> list[dict]:
    return list(loader)


def test_workers_give_same_batches(digits_train: ArraySplit) -> None:
    aug = build_augmentation({"name": "crop_flip"})
    ds = DistillDataset(digits_train, aug, seed=4)
    ref = example_loader(ds, batch_size=64, shuffle=True, seed=11)
    par = example_loader(ds, batch_size=64, shuffle=True, seed=11, num_workers=2)
    for epoch in (0, 1):
        ref.set_epoch(epoch)
        par.set_epoch(epoch)
        a, b = batches(ref), batches(par)
        assert len(a) == len(b) == -(-len(ds) // 64)
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x["id"], y["id"])
            assert torch.equal(x["target"], y["target"])
            assert torch.equal(x["aug"], y["aug"])
            assert torch.equal(x["views"]["teacher"], y["views"]["teacher"])
            assert torch.equal(x["views"]["student"], y["views"]["student"])
    b0 = a[0]
    assert b0["views"]["teacher"].shape == (64, 1, 8, 8)
    assert b0["aug"].shape == (64, 3) and b0["target"].shape == (64,)


def test_loader_does_not_touch_global_rng(digits_train: ArraySplit) -> None:
    loader = example_loader(DistillDataset(digits_train), batch_size=256, shuffle=True, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    batches(loader)
    assert torch.equal(torch.rand(3), expected)


def test_epoch_sampler() -> None:
    s = EpochSampler(50, shuffle=True, seed=7)
    e0 = list(s)
    assert sorted(e0) == list(range(50)) and len(s) == 50
    assert list(s) == e0  # reproducible within an epoch
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and sorted(e1) == list(range(50))
    resumed = EpochSampler(50, shuffle=True, seed=7)
    resumed.set_epoch(1)
    assert list(resumed) == e1  # resuming at epoch 1 replays its order
    assert list(EpochSampler(50, shuffle=True, seed=8)) != e0
    assert list(EpochSampler(5, shuffle=False, seed=7)) == [0, 1, 2, 3, 4]


def test_loader_order_follows_epoch(digits_train: ArraySplit) -> None:
    ds = DistillDataset(digits_train)
    loader = example_loader(ds, batch_size=len(ds), shuffle=True, seed=0)
    first = next(iter(loader))["id"]
    assert next(iter(loader))["id"].tolist() == first.tolist()
    loader.set_epoch(3)
    assert ds.epoch == 3
    assert next(iter(loader))["id"].tolist() != first.tolist()
    plain = example_loader(ds, batch_size=10, shuffle=False, seed=0, drop_last=True)
    assert next(iter(plain))["id"].tolist() == list(range(10))
    assert len(plain) == len(ds) // 10


def test_as_distill_dataset_wraps_pairs() -> None:
    x = torch.rand(6, 1, 4, 4)
    y = torch.arange(6) % 3
    ds = as_distill_dataset(TensorDataset(x, y))
    assert isinstance(ds, DistillDataset) and len(ds) == 6
    ex = ds[2]
    assert ex["id"] == 2
    assert torch.equal(ex["views"]["teacher"], x[2]) and torch.equal(ex["views"]["student"], x[2])
    assert ex["target"].dtype == torch.int64 and int(ex["target"]) == 2
    assert ex["aug"].shape == (0,)
    batch = next(iter(example_loader(ds, batch_size=4, shuffle=False, seed=0)))
    assert batch["views"]["student"].shape == (4, 1, 4, 4) and batch["aug"].shape == (4, 0)
    ds.set_epoch(1)  # interface parity with DistillDataset
    assert as_distill_dataset(ds) is ds


def test_as_distill_dataset_passthrough_and_errors(digits_train: ArraySplit) -> None:
    ds = DistillDataset(digits_train)
    assert as_distill_dataset(ds) is ds
    assert isinstance(as_distill_dataset(digits_train), DistillDataset)
    uint8 = as_distill_dataset(
        TensorDataset(
            torch.full((2, 1, 2, 2), 255, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
        )
    )
    assert torch.equal(uint8[0]["views"]["student"], torch.ones(1, 2, 2))
    singles = as_distill_dataset(TensorDataset(torch.zeros(3, 2)))
    with pytest.raises(DataError, match="pair"):
        singles[0]
