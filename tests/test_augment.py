"""Recorded augmentations: parameters fully determine the output, and are seeded per example."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossdistill.data import DistillDataset, build_augmentation, load_source
from crossdistill.data.augment import AUGMENTATIONS, Augmentation, NoAugment, RandomCropFlip
from crossdistill.errors import ConfigError, DataError, UnknownNameError


def image(c: int = 2, h: int = 6, w: int = 5) -> torch.Tensor:
    return torch.arange(c * h * w, dtype=torch.float32).reshape(c, h, w) + 1.0


def test_registry_and_build() -> None:
    assert {"crop_flip", "none"} <= set(AUGMENTATIONS.names())
    aug = build_augmentation({"name": "crop_flip", "params": {"padding": 3, "flip": False}})
    assert isinstance(aug, RandomCropFlip)
    assert (aug.padding, aug.flip, aug.num_params) == (3, False, 3)
    assert isinstance(build_augmentation(None), NoAugment)
    assert isinstance(build_augmentation("none"), NoAugment)
    assert isinstance(aug, Augmentation)
    assert build_augmentation(aug) is aug


def test_build_errors() -> None:
    with pytest.raises(UnknownNameError, match="crop_flp"):
        build_augmentation({"name": "crop_flp"})
    with pytest.raises(ConfigError, match="name"):
        build_augmentation({"padding": 2})
    with pytest.raises(ConfigError, match="bogus"):
        build_augmentation({"name": "crop_flip", "params": {"bogus": 1}})
    with pytest.raises(
        ConfigError, match="belong under params"
    ):  # the spelling before {name, params}
        build_augmentation({"name": "crop_flip", "padding": 2})
    with pytest.raises(ConfigError, match="padding"):
        build_augmentation({"name": "crop_flip", "params": {"padding": -1}})


def test_sampled_params_are_in_range() -> None:
    aug = RandomCropFlip(padding=2)
    rng = np.random.default_rng(0)
    params = np.stack([aug.sample(rng, (1, 8, 8)) for _ in range(500)])
    assert params.dtype == np.float64 and params.shape == (500, 3)
    assert set(params[:, 0]) == set(params[:, 1]) == {0.0, 1.0, 2.0, 3.0, 4.0}
    assert set(params[:, 2]) == {0.0, 1.0}
    no_flip = RandomCropFlip(padding=1, flip=False)
    assert all(no_flip.sample(rng, (1, 8, 8))[2] == 0 for _ in range(50))


def test_same_params_same_output() -> None:
    aug = RandomCropFlip(padding=2)
    x = image()
    params = aug.sample(np.random.default_rng(7), tuple(x.shape))
    a = aug.apply(x, params)
    b = aug.apply(x.clone(), torch.as_tensor(params, dtype=torch.float32))
    assert torch.equal(a, b)
    assert torch.equal(x, image())  # input untouched


def test_identity_params() -> None:
    for p in (0, 1, 2, 4):
        x = image()
        out = RandomCropFlip(padding=p).apply(x, np.array([p, p, 0.0]))
        assert torch.equal(out, x)
    x = image()
    assert NoAugment().apply(x, np.empty(0)) is x


def test_flip_twice_is_identity() -> None:
    aug = RandomCropFlip(padding=2)
    x = image()
    once = aug.apply(x, [2, 2, 1])
    assert torch.equal(once, x.flip(-1))
    assert torch.equal(aug.apply(once, [2, 2, 1]), x)


def test_crop_offset_shifts_content() -> None:
    x = torch.zeros(1, 5, 5)
    x[0, 2, 2] = 1.0
    aug = RandomCropFlip(padding=2)
    # Offset (dy, dx) crops the padded image at (dy, dx): content moves by (padding - dy, ...).
    out = aug.apply(x, [0, 0, 0])
    assert out[0, 4, 4] == 1.0 and out.sum() == 1.0
    out = aug.apply(x, [4, 4, 0])
    assert out[0, 0, 0] == 1.0 and out.sum() == 1.0
    out = aug.apply(x, [1, 3, 0])
    assert out[0, 3, 1] == 1.0 and out.sum() == 1.0
    # Shifted-in border is zero padding; content pushed past the edge is dropped.
    y = image(1, 4, 4)
    shifted = aug.apply(y, [0, 2, 0])
    assert torch.equal(shifted[0, 2:, :], y[0, :2, :])
    assert torch.equal(shifted[0, :2, :], torch.zeros(2, 4))
    # Padding larger than the image: a full shift leaves nothing.
    assert torch.equal(RandomCropFlip(padding=5).apply(y, [0, 5, 0]), torch.zeros_like(y))


def test_crop_matches_pad_then_crop() -> None:
    aug = RandomCropFlip(padding=2)
    x = image(3, 7, 6)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for dy in range(5):
        for dx in range(5):
            expected = padded[:, dy : dy + 7, dx : dx + 6]
            assert torch.equal(aug.apply(x, [dy, dx, 0]), expected)
            assert torch.equal(aug.apply(x, [dy, dx, 1]), expected.flip(-1))


@pytest.mark.parametrize(
    ("shape", "padding"),
    [((3, 7, 6), 2), ((1, 5, 5), 1), ((4, 4), 2), ((2, 3, 3), 4)],  # last: padding > size
)
def test_a_batch_equals_its_rows_one_by_one(shape: tuple[int, ...], padding: int) -> None:
    """apply_batch (one gather for the batch) is bit-identical to apply on each row, for every
    offset and flip, with and without a channel axis, and when the shift leaves the frame."""
    aug = RandomCropFlip(padding=padding)
    offsets = range(2 * padding + 1)
    params = np.array([[dy, dx, f] for dy in offsets for dx in offsets for f in (0, 1)], float)
    x = torch.rand(len(params), *shape, generator=torch.Generator().manual_seed(0))
    rows = torch.stack([aug.apply(x[b], params[b]) for b in range(len(x))])
    assert torch.equal(aug.apply_batch(x, params), rows)


def test_a_batch_with_a_bad_row_raises_that_rows_error() -> None:
    aug = RandomCropFlip(padding=2)
    with pytest.raises(DataError, match=r"\[5, 0, 0\] out of range"):
        aug.apply_batch(torch.zeros(3, 1, 4, 4), np.array([[0, 0, 0], [5, 0, 0], [9, 9, 9]]))
    with pytest.raises(DataError, match="3 x 3 parameters"):
        aug.apply_batch(torch.zeros(3, 1, 4, 4), np.zeros((3, 2)))


def test_bad_params() -> None:
    aug = RandomCropFlip(padding=2)
    with pytest.raises(DataError, match="3 parameters"):
        aug.apply(image(), [1, 1])
    with pytest.raises(DataError, match="out of range"):
        aug.apply(image(), [5, 0, 0])
    with pytest.raises(DataError, match="0 parameters"):
        NoAugment().apply(image(), [1.0])


@pytest.fixture(scope="module")
def digits_train():
    return load_source("digits", "train")


def test_params_depend_on_seed_and_epoch(digits_train) -> None:
    aug = build_augmentation({"name": "crop_flip", "params": {"padding": 2}})
    ds0 = DistillDataset(digits_train, aug, seed=0)
    ds1 = DistillDataset(digits_train, aug, seed=1)
    ids = range(64)
    p0 = np.stack([ds0.aug_params(i) for i in ids])
    assert not np.array_equal(p0, np.stack([ds1.aug_params(i) for i in ids]))
    ds0.set_epoch(1)
    assert not np.array_equal(p0, np.stack([ds0.aug_params(i) for i in ids]))
    ds0.set_epoch(0)
    assert np.array_equal(p0, np.stack([ds0.aug_params(i) for i in ids]))


def test_params_independent_of_request_order(digits_train) -> None:
    aug = build_augmentation({"name": "crop_flip"})
    forward = DistillDataset(digits_train, aug, seed=3)
    backward = DistillDataset(digits_train, aug, seed=3)
    forward.set_epoch(2)
    backward.set_epoch(2)
    ids = list(range(40))
    a = {i: forward[i] for i in ids}
    b = {i: backward[i] for i in reversed(ids)}
    for i in ids:
        assert torch.equal(a[i]["aug"], b[i]["aug"])
        assert torch.equal(a[i]["views"]["student"], b[i]["views"]["student"])
        # The recorded params re-create the view from the raw image.
        raw = digits_train.inputs[i].float() / 255
        assert torch.equal(aug.apply(raw, a[i]["aug"]), a[i]["views"]["teacher"])
