"""The ``noisy_labels`` data source: symmetric label noise, exact in count, seeded, recorded, on
the training split only by default."""

from __future__ import annotations

import pytest
import torch

from crossdistill.data.sources import load_source
from crossdistill.data.split import Split
from crossdistill.errors import ConfigError, DataError

DIGITS = {"source": "digits", "params": {"test_fraction": 0.2}}


def _noisy(split: str = "train", **params: object) -> Split:
    return load_source("noisy_labels", split, **{**DIGITS, "fraction": 0.4, **params})


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.4, 0.75])
def test_the_fraction_flipped_is_exact_and_every_flip_is_to_another_class(fraction: float) -> None:
    clean = load_source("digits", "train", test_fraction=0.2)
    split = _noisy(fraction=fraction)
    assert torch.equal(split.meta["clean_target"], clean.targets)
    noisy = split.meta["noisy"]
    changed = split.targets != clean.targets
    assert torch.equal(noisy, changed)  # every example marked noisy has another class
    assert int(noisy.sum()) == round(fraction * len(clean))
    assert split.targets.dtype == torch.int64 and split.targets.max() < 10
    assert torch.equal(split.inputs, clean.inputs)  # the examples themselves are the same


def test_flips_spread_over_every_other_class() -> None:
    split = _noisy(fraction=0.6)
    noisy = split.meta["noisy"]
    offsets = (split.targets[noisy] - split.meta["clean_target"][noisy]) % 10
    # offsets 1..9 all occur, about equally (~95 each of ~862 flips)
    counts = torch.bincount(offsets, minlength=10)
    assert counts[0] == 0 and bool((counts[1:] > 50).all())


def test_the_same_seed_flips_the_same_examples() -> None:
    a, b, c = _noisy(seed=3), _noisy(seed=3), _noisy(seed=4)
    assert torch.equal(a.targets, b.targets) and torch.equal(a.meta["noisy"], b.meta["noisy"])
    assert not torch.equal(a.meta["noisy"], c.meta["noisy"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_the_test_split_is_untouched_unless_listed() -> None:
    clean = load_source("digits", "test", test_fraction=0.2)
    test = _noisy("test")
    assert torch.equal(test.targets, clean.targets) and test.fingerprint() == clean.fingerprint()
    corrupted = _noisy("test", splits=["train", "test"])
    assert int(corrupted.meta["noisy"].sum()) == round(0.4 * len(clean))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_a_fraction_outside_0_1_is_refused(fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"must lie in \[0, 1\)"):
        _noisy(fraction=fraction)


def _regression(split: str) -> Split:
    return Split({"x": torch.zeros(4, 2)}, name=f"values/{split}", targets=torch.rand(4))


def _unlabelled(split: str) -> Split:
    return Split({"x": torch.zeros(4, 2)}, name=f"plain/{split}")


@pytest.mark.parametrize("source", [_regression, _unlabelled])
def test_a_source_without_class_labels_is_refused(source: object) -> None:
    with pytest.raises(DataError, match="not one class label per example"):
        load_source("noisy_labels", "train", source=source, fraction=0.2)
