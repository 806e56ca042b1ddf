"""``data.limit_train``: a seeded random subset, stratified by class where the split holds class
labels, or (``data.limit_mode: first``) the first N; the same on every process; and a knowledge
store's fingerprint that tells the two apart while still accepting stores written before
``limit_mode`` existed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from crossdistill._util.hashing import digest
from crossdistill.build import (
    Limited,
    build_dataset,
    build_distiller,
    limit_indices,
    store_fingerprint,
)
from crossdistill.config import Recipe, load_recipe
from crossdistill.data.dataset import make_dataset
from crossdistill.data.split import ArraySplit, Split
from crossdistill.errors import ConfigError
from crossdistill.export.card import _data_section

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "recipes" / "digits" / "teacher.yaml"
N = 200


def _recipe(*overrides: str) -> Recipe:
    return load_recipe(TEACHER, ["train.device=cpu", *overrides])


@pytest.fixture(scope="module")
def full() -> Any:
    return build_dataset(_recipe(), "train", True)


def _indices(*overrides: str) -> list[int]:
    dataset = build_dataset(_recipe(f"data.limit_train={N}", *overrides), "train", True)
    assert isinstance(dataset, Limited) and len(dataset) == N
    return list(dataset.indices)


def test_random_subset_keeps_each_class_share(full: Any) -> None:
    """On the digits' training split every class keeps its share of N, within one example."""
    chosen = _indices()
    assert chosen == sorted(set(chosen))  # in the dataset's order, no repeats
    labels = full.split.targets
    whole = Counter(labels.tolist())
    kept = Counter(labels[chosen].tolist())
    assert sum(kept.values()) == N and set(kept) == set(whole)
    for c, count in whole.items():
        assert abs(kept[c] - N * count / len(full)) <= 1, (c, kept[c], count)
    assert chosen != list(range(N))  # not the first N


def test_the_seed_picks_the_subset() -> None:
    assert _indices() == _indices()
    assert _indices("seed=1") != _indices()


def test_first_mode_is_the_first_n(full: Any) -> None:
    dataset = build_dataset(
        _recipe(f"data.limit_train={N}", "data.limit_mode=first"), "train", True
    )
    assert list(dataset.indices) == list(range(N))
    assert [dataset[i]["id"] for i in (0, N - 1)] == [0, N - 1]


def test_positions_map_to_the_datasets_examples() -> None:
    """What a store writer and reader call (``example``, ``slot``, ``slot_params``) takes the
    subset's positions: the views equal the subset's own items, augmentations included."""
    recipe = _recipe(
        f"data.limit_train={N}", "data.augment={name: crop_flip}", "data.augment_slots=3"
    )
    dataset = build_dataset(recipe, "train", True)
    dataset.set_epoch(2)
    for i in (0, 7, N - 1):
        item = dataset[i]
        again = dataset.example(i, dataset.slot_params(i, dataset.slot(i)))
        assert item["id"] == again["id"] == dataset.indices[i]
        torch.testing.assert_close(item["views"]["student"], again["views"]["student"])
        torch.testing.assert_close(item["aug"], torch.as_tensor(dataset.aug_params(i)).float())


def test_a_limit_at_or_above_the_split_size_changes_nothing(full: Any) -> None:
    for mode in ("random", "first"):
        recipe = _recipe(f"data.limit_train={len(full)}", f"data.limit_mode={mode}")
        dataset = build_dataset(recipe, "train", True)
        assert not isinstance(dataset, Limited) and len(dataset) == len(full)
    assert limit_indices(full, len(full) + 5) is None


class _Column:
    """A field that counts how often an example is read."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        self.reads += 1
        return torch.zeros(2)


def test_labels_come_from_the_targets_alone() -> None:
    """A split holding its targets: no example is read to stratify; a rare class is kept."""
    targets = torch.zeros(1000, dtype=torch.int64)
    targets[500] = 3  # one example of class 3
    column = _Column(1000)
    dataset = make_dataset(Split({"x": column}, name="lazy", targets=targets))
    chosen = limit_indices(dataset, 10, seed=4)
    assert column.reads == 0
    assert chosen is not None and len(chosen) == 10 and 500 in chosen


@pytest.mark.parametrize("targets", [None, "regression"])
def test_unlabelled_and_regression_splits_draw_plainly(targets: str | None) -> None:
    x = torch.arange(300, dtype=torch.float32).view(300, 1)
    y = x.squeeze(1) / 7 if targets else None
    dataset = make_dataset(Split({"x": x}, name="values", targets=y))
    chosen = limit_indices(dataset, 50, seed=0)
    assert chosen is not None and len(chosen) == 50 == len(set(chosen))
    assert chosen == sorted(chosen) and chosen != list(range(50))
    assert chosen == limit_indices(dataset, 50, seed=0) != limit_indices(dataset, 50, seed=1)
    assert limit_indices(dataset, 50, "first") == list(range(50))


def test_integer_class_shares_with_largest_remainders() -> None:
    """Shares 0.5 / 0.3 / 0.2 of 7: quotas 3.5, 2.1, 1.4 -> 3 + 2 + 1 = 6, the largest
    remainder (class 0's .5) takes the seventh."""
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    split = ArraySplit(torch.zeros(100, 1), labels, ["a", "b", "c"], "shares")
    chosen = limit_indices(make_dataset(split), 7, seed=0)
    assert Counter(labels[chosen].tolist()) == {0: 4, 1: 2, 2: 1}


def test_the_store_fingerprint_tells_random_from_first() -> None:
    random = _recipe(f"data.limit_train={N}")
    first = _recipe(f"data.limit_train={N}", "data.limit_mode=first")
    other_seed = _recipe(f"data.limit_train={N}", "seed=1")
    torch.manual_seed(0)
    teacher = build_distiller(random).teacher

    def data_part(recipe: Recipe) -> str:
        return store_fingerprint(recipe, teacher, build_dataset(recipe, "train", True))["data"]

    assert len({data_part(random), data_part(first), data_part(other_seed)}) == 3
    # `first` hashes exactly what the code before limit_mode did: its stores still match
    dataset = build_dataset(first, "train", True)
    d = first.data
    old = digest(
        d.source,
        d.params,
        d.train_split,
        d.limit_train,
        dataset.split.side("teacher"),
        dataset.split.fingerprint(),
        len(dataset),
    )
    assert data_part(first) == old
    # and without a limit nothing changes either
    plain = _recipe()
    whole = build_dataset(plain, "train", True)
    assert data_part(plain) == digest(
        d.source,
        d.params,
        d.train_split,
        None,
        whole.split.side("teacher"),
        whole.split.fingerprint(),
        len(whole),
    )


def test_a_misspelt_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data\.limit_mode: Input should be 'random' or 'first'"):
        _recipe("data.limit_train=10", "data.limit_mode=frist")


def test_the_model_card_says_how_the_examples_were_chosen() -> None:
    def data_rows(*overrides: str) -> str:
        return _data_section(SimpleNamespace(config=_recipe(*overrides)), None)  # type: ignore[arg-type]

    random = data_rows(f"data.limit_train={N}", "seed=7")
    assert f"at most {N} examples used, drawn at random with seed 7" in random
    first = data_rows(f"data.limit_train={N}", "data.limit_mode=first")
    assert f"at most its first {N} examples used" in first
    assert "examples used" not in data_rows()


def test_a_run_written_before_limit_mode_reads_as_the_first_n(tmp_path: Path) -> None:
    """A config.yaml of crossdistill 0.1 (limit_train, no limit_mode) trained on the first N: it
    reads back so, and resuming it with a recipe that now means a random subset is refused."""
    import yaml

    from crossdistill.config import dump_recipe
    from crossdistill.runs import Run

    recipe = _recipe(f"data.limit_train={N}", f"output.dir={tmp_path}")
    run = Run(recipe.run_dir)
    run.path.mkdir()
    dump_recipe(recipe, run.config_file)
    assert Run(run.path).recipe().data.limit_mode == "random"  # written now: says its mode
    old = yaml.safe_load(run.config_file.read_text())
    del old["data"]["limit_mode"]
    run.config_file.write_text(yaml.safe_dump(old, sort_keys=False))
    assert Run(run.path).recipe().data.limit_mode == "first"
    assert Run(run.path).recipe().fingerprint() != recipe.fingerprint()  # a resume is refused
    pinned = _recipe(f"data.limit_train={N}", "data.limit_mode=first", f"output.dir={tmp_path}")
    assert Run(run.path).recipe().fingerprint() == pinned.fingerprint()


def test_a_subsets_batch_reads_the_examples_it_keeps() -> None:
    """Whole batches read through the subset (what a store-backed loader asks) are those of its
    own positions, not the first positions of the full split."""
    dataset = build_dataset(_recipe(f"data.limit_train={N}", "data.augment_slots=2"), "train", True)
    positions = [3, 0, 7]
    batch = dataset.batch(positions, None if not dataset.augmentation.num_params else
                          [dataset.aug_params(p) for p in positions])  # fmt: skip
    one_by_one = [dataset[p] for p in positions]
    assert batch["id"].tolist() == [int(e["id"]) for e in one_by_one]
    assert batch["id"].tolist() == [dataset.indices[p] for p in positions]
    assert dataset.slots_of(positions).tolist() == [dataset.slot(p) for p in positions]
