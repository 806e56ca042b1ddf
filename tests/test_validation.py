"""``data.validation``: a validation split carved from the training split (seeded, stratified,
grouped) or named from the source; evaluated each epoch, while the test split is read once after
the last epoch (or never, with ``eval.test: false``); eval.json and the log say which split each
number is on."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import crossdistill
from crossdistill.build import Limited, build_dataset, store_fingerprint
from crossdistill.config import Recipe, load_recipe
from crossdistill.data import DATA_SOURCES
from crossdistill.data.split import ArraySplit, Split
from crossdistill.errors import ConfigError, DataError
from crossdistill.pipeline import run_recipe

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "recipes" / "digits" / "teacher.yaml"
LOADED: list[str] = []  # the splits the recording source below was asked for


def recording(split: str) -> Split:
    """The digits, remembering which split was loaded (a source by import path)."""
    LOADED.append(split)
    return DATA_SOURCES.build("digits", {}, "data", split=split)


def grouped(split: str, n: int = 120, groups: int = 12) -> Split:
    """Random 8x8 images in ``groups`` groups of consecutive examples, 3 classes."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % 3
    return Split(
        {"input": x},
        name=f"grouped/{split}",
        targets=y,
        class_names=["a", "b", "c"],
        groups=[f"g{i * groups // n}" for i in range(n)],
    )


def _recipe(*overrides: str) -> Recipe:
    return load_recipe(TEACHER, ["train.device=cpu", "train.progress=false", *overrides])


def _indices(dataset: Any) -> list[int]:
    assert isinstance(dataset, Limited)
    return list(dataset.indices)


def test_the_carve_is_disjoint_stratified_and_seeded() -> None:
    recipe = _recipe("data.validation=0.2")
    train, val = build_dataset(recipe, "train", True), build_dataset(recipe, "val", False)
    whole = build_dataset(_recipe(), "train", True)
    t, v = _indices(train), _indices(val)
    assert not set(t) & set(v) and sorted(t + v) == list(range(len(whole)))
    assert len(v) == round(0.2 * len(whole))
    labels = whole.split.targets
    share = Counter(labels.tolist())
    for c, count in Counter(labels[v].tolist()).items():
        assert abs(count - 0.2 * share[c]) <= 1, (c, count, share[c])
    # the recipe's seed does not move the carve (every seed validates on the same examples)...
    assert _indices(build_dataset(_recipe("data.validation=0.2", "seed=3"), "val", False)) == v
    # ...its own seed does
    moved = build_dataset(_recipe("data.validation={fraction: 0.2, seed: 1}"), "val", False)
    assert _indices(moved) != v


def test_the_validation_examples_are_the_training_examples_unaugmented() -> None:
    recipe = _recipe("data.validation=0.1", "data.augment={name: crop_flip}")
    val = build_dataset(recipe, "val", False)
    plain = build_dataset(_recipe(), "train", False)
    i = _indices(val)[3]
    assert torch.equal(val[3]["views"]["student"], plain[i]["views"]["student"])


def test_limit_train_draws_from_what_the_carve_left() -> None:
    recipe = _recipe("data.validation=0.25", "data.limit_train=100")
    train, val = build_dataset(recipe, "train", True), build_dataset(recipe, "val", False)
    assert len(train) == 100 and not set(_indices(train)) & set(_indices(val))


def test_groups_are_never_split(tmp_path: Path) -> None:
    recipe = _recipe(f"data.source={__name__}:grouped", "data.validation=0.25")
    train, val = build_dataset(recipe, "train", True), build_dataset(recipe, "val", False)
    groups = train.split.groups
    in_train = {groups[i] for i in _indices(train)}
    in_val = {groups[i] for i in _indices(val)}
    assert in_val and in_train and not in_train & in_val
    assert len(_indices(val)) >= 0.25 * 120


def test_a_run_evaluates_validation_each_epoch_and_the_test_once(tmp_path: Path) -> None:
    LOADED.clear()
    recipe = _recipe(
        f"data.source={__name__}:recording",
        "data.validation=0.2",
        "train.epochs=2",
        f"output.dir={tmp_path}",
    )
    result = run_recipe(recipe)
    records = [json.loads(line) for line in result.run.metrics_file.read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    tests = [r for r in records if r["kind"] == "test"]
    assert [(r["epoch"], r["split"]) for r in evals] == [(1, "val"), (2, "val")]
    assert [(r["epoch"], r["split"]) for r in tests] == [(2, "test")]
    saved = json.loads(result.run.eval_file().read_text())
    assert saved["split"] == "test" and saved["accuracy"] == tests[0]["accuracy"]
    assert saved["validation"]["split"] == "val"
    assert saved["validation"]["accuracy"] == evals[-1]["accuracy"]
    assert (
        result.metrics["split"] == "test" and result.history.test["accuracy"] == saved["accuracy"]
    )
    assert set(LOADED) == {"train", "test"}  # the validation split came from train


def test_with_eval_test_off_the_test_split_is_never_read(tmp_path: Path) -> None:
    LOADED.clear()
    recipe = _recipe(
        f"data.source={__name__}:recording",
        "data.validation=0.2",
        "eval.test=false",
        "train.epochs=1",
        f"output.dir={tmp_path}",
    )
    result = run_recipe(recipe)
    assert set(LOADED) == {"train"}
    saved = json.loads(result.run.eval_file().read_text())
    assert saved["split"] == "val" and "validation" not in saved
    assert not [
        line for line in result.run.metrics_file.read_text().splitlines() if '"test"' in line
    ]


def test_without_validation_the_evaluation_split_is_named(tmp_path: Path) -> None:
    result = run_recipe(_recipe("train.epochs=1", f"output.dir={tmp_path}"))
    saved = json.loads(result.run.eval_file().read_text())
    assert saved["split"] == "test" and "validation" not in saved
    assert not result.history.test


def test_a_sources_own_split_validates(tmp_path: Path) -> None:
    """``validation: NAME`` reads the source's split of that name; here the digits' test split
    stands in for a source's own validation split."""
    recipe = _recipe(
        "data.validation=test", "data.eval_split=test", "train.epochs=1", f"output.dir={tmp_path}"
    )
    assert build_dataset(recipe, "test", False).split.name.endswith("test")
    result = run_recipe(recipe)
    assert json.loads(result.run.eval_file().read_text())["split"] == "test"
    assert not result.history.test  # the same split: read once per epoch, not again


def test_the_training_store_knows_the_carve() -> None:
    plain, carved = _recipe(), _recipe("data.validation=0.2")
    a = store_fingerprint(plain, None, build_dataset(plain, "train", True))
    b = store_fingerprint(carved, None, build_dataset(carved, "train", True))
    assert a["data"] != b["data"] and a["augmentation"] == b["augmentation"]


@pytest.mark.parametrize(
    ("override", "error", "phrase"),
    [
        ("data.validation=train", ConfigError, "also data.train_split"),
        ("data.validation=1.5", ConfigError, "validation.fraction"),
        ("data.validation={fraction: 0.0001}", DataError, "leaves no validation example"),
        ("data.validation={split: val}", DataError, "has no split 'val'"),
    ],
)
def test_bad_validation_settings_are_named(override: str, error: type, phrase: str) -> None:
    with pytest.raises(error) as info:
        build_dataset(_recipe(override), "val", False)
    assert phrase in str(info.value.message if hasattr(info.value, "message") else info.value)


def test_one_group_cannot_be_carved() -> None:
    recipe = _recipe(
        f"data.source={__name__}:grouped", "data.params={groups: 1}", "data.validation=0.3"
    )
    with pytest.raises(DataError, match="a group is never split"):
        build_dataset(recipe, "train", True)


def test_distill_evaluates_val_data_each_epoch_and_eval_data_once() -> None:
    g = torch.Generator().manual_seed(0)

    def data(n: int) -> ArraySplit:
        x = torch.rand(n, 4, generator=g)
        return ArraySplit(x, (x.sum(1) > 2).long(), ["lo", "hi"], "toy")

    seen: list[tuple[int, float]] = []

    class Watch(crossdistill.Callback):
        def on_eval(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
            seen.append((epoch, metrics["accuracy"]))

    torch.manual_seed(0)
    result = crossdistill.distill(
        None,
        nn.Linear(4, 2),
        data(64),
        losses=["ce"],
        val_data=data(32),
        eval_data=data(40),
        epochs=3,
        progress=False,
        device="cpu",
        callbacks=[Watch()],
    )
    assert [e for e, _ in seen] == [1, 2, 3]
    assert result.metrics["split"] == "eval_data"
    assert result.metrics["validation"]["accuracy"] == seen[-1][1]
    assert result.history.test == {
        k: v for k, v in result.metrics.items() if k in result.history.test
    }
