"""Batch-level reads: a DataLoader's batch read from a knowledge store (or built from the data)
at once equals the examples read one by one and collated, bit for bit; loading with workers
trains exactly as loading in the main process."""

from __future__ import annotations

import json
import pickle
from collections import namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, default_collate

from conftest import DIGITS
from crossdistill.build import Limited
from crossdistill.config import Recipe, validate_recipe
from crossdistill.core.wrappers import Teacher
from crossdistill.data.augment import RandomCropFlip
from crossdistill.data.dataset import (
    Collated,
    DistillDataset,
    collate_examples,
    example_loader,
    in_one_block,
)
from crossdistill.data.split import ArraySplit, Split
from crossdistill.pipeline import cache_recipe, run_recipe
from crossdistill.runs import Run
from crossdistill.store import KeyCodec, KnowledgeStore, StoreDataset, write_store
from crossdistill.store import reader as store_reader

N, CLASSES, SHARD = 50, 10, 16
# unsorted, repeated, across all four shards (16 rows each, the last one short)
INDICES = [49, 0, 17, 16, 15, 33, 17, 2, 48, 31, 32, 0, 47]


def assert_identical(a: Any, b: Any, where: str = "batch") -> None:
    """``a`` and ``b`` are the same structure with bit-identical tensors of the same dtype."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{tuple(a.shape)}"
        assert torch.equal(a, b), f"{where}: values differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


class TwoHeads(nn.Module):
    """A tiny teacher: 10 logits and a 3x2 feature map per image."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(36, CLASSES + 6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fc(x.flatten(1)) * 4
        return out[:, :CLASSES], out[:, CLASSES:].reshape(-1, 3, 2)


def images(n: int = 70) -> ArraySplit:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8, generator=g)
    return ArraySplit(x, torch.arange(n) % CLASSES, [str(c) for c in range(CLASSES)], "tiny")


def dataset(slots: int | None, subset: bool) -> Any:
    """N examples: all of a split of N, or (``subset``) examples 69, 68, ... 20 of one of 70."""
    augmentation = RandomCropFlip(padding=1) if slots else None
    data = DistillDataset(
        images(70 if subset else N), augmentation=augmentation, seed=3, slots=slots
    )
    return Limited(data, list(range(69, 19, -1))) if subset else data


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, Path]:
    """One store per (logits format, dtype, slots, subset), written by the tiny teacher."""
    torch.manual_seed(0)
    teacher = Teacher(TwoHeads(), outputs=["logits", "features/map"]).eval()
    root = tmp_path_factory.mktemp("stores")
    found = {}
    for fmt in ("topk", "dense"):
        for dtype in ("float16", "float32"):
            for slots in (None, 3):
                for subset in (False, True):
                    key = (fmt, dtype, slots, subset)
                    path = root / "-".join(map(str, key))
                    keys = {
                        "logits": KeyCodec(format=fmt, k=3 if fmt == "topk" else None, dtype=dtype),
                        "features/map": KeyCodec(dtype=dtype),
                    }
                    write_store(
                        path,
                        teacher,
                        dataset(slots, subset),
                        keys,
                        {"data": "tiny"},
                        shard_size=SHARD,
                        progress=False,
                    )
                    found[key] = path
    return found


@pytest.mark.parametrize("subset", [False, True], ids=["in-order", "subset"])
@pytest.mark.parametrize("slots", [None, 3], ids=["no-aug", "3-slots"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("fmt", ["topk", "dense"])
def test_a_batch_read_at_once_equals_examples_one_by_one(
    stores: dict[tuple, Path], fmt: str, dtype: str, slots: int | None, subset: bool
) -> None:
    store = KnowledgeStore(stores[(fmt, dtype, slots, subset)])
    data = StoreDataset(dataset(slots, subset), store)
    data.set_epoch(1)
    batch = data.__getitems__(INDICES)
    assert isinstance(batch, Collated)
    one_by_one = default_collate([data[i] for i in INDICES])
    assert_identical(collate_examples(batch), one_by_one)
    assert one_by_one["knowledge"]["logits"].shape == (len(INDICES), CLASSES)
    # the store's own gather and decode, row by row against random access
    ks = np.array([data.base.slot(i) if slots else 0 for i in INDICES])
    decoded = store.decode(store.rows(INDICES, ks))
    for b, (i, k) in enumerate(zip(INDICES, ks, strict=True)):
        for key, value in store.knowledge(i, int(k)).items():
            assert_identical(decoded[key][b], value, f"example {i} slot {k} {key}")
    # a DataLoader with the default collate gets the examples one by one: the same batch
    assert_identical(default_collate(batch), one_by_one)
    # and the per-example path, kept for comparison, is the same batch too
    data._batched = False
    assert_identical(default_collate(data.__getitems__(INDICES)), one_by_one)


def test_slots_of_a_batch_follow_the_epoch() -> None:
    data = dataset(3, False)
    tables = []
    for epoch in (0, 5):
        data.set_epoch(epoch)
        tables.append(data.slots_of(np.array(INDICES)).tolist())
        assert tables[-1] == [data.slot(i) for i in INDICES]
    assert tables[0] != tables[1]


def test_a_batch_out_of_range_names_the_example(stores: dict[tuple, Path]) -> None:
    store = KnowledgeStore(stores[("topk", "float16", 3, False)])
    data = StoreDataset(dataset(3, False), store)
    with pytest.raises(IndexError, match="example index 50"):
        data.__getitems__([3, 50])
    with pytest.raises(IndexError, match="example 50, slot 0"):
        store.rows([3, 50], [0, 0])
    with pytest.raises(IndexError, match="slot 3"):
        store.rows([3, 4], [0, 3])


def test_plain_examples_built_at_once_equal_one_by_one() -> None:
    """Without a store: two views of one field (separate tensors, as collating each gives),
    a text field collated as the default collate does, float targets, drawn augmentation."""
    g = torch.Generator().manual_seed(1)
    split = Split(
        {
            "image": torch.randint(0, 256, (N, 1, 6, 6), dtype=torch.uint8, generator=g),
            "text": [f"sentence {i}" for i in range(N)],
        },
        name="mixed",
        targets=torch.rand(N, generator=g, dtype=torch.float64),
        sides={"teacher": ["image", "text"], "student": "image"},
    )
    for slots in (None, 4):
        data = DistillDataset(split, augmentation=RandomCropFlip(1), seed=2, slots=slots)
        data.set_epoch(2)
        batch = collate_examples(data.__getitems__(INDICES))
        assert_identical(batch, default_collate([data[i] for i in INDICES]))
        assert batch["target"].dtype == torch.float64
        student, teacher = batch["views"]["student"], batch["views"]["teacher"]["image"]
        assert torch.equal(student, teacher)
        assert student.data_ptr() != teacher.data_ptr()  # not aliased
    # negative indices count from the end, as dataset[i] does
    assert_identical(
        collate_examples(data.__getitems__([-1, 0])), default_collate([data[N - 1], data[0]])
    )


def test_each_shard_is_hashed_once_and_copies_inherit_it(
    stores: dict[tuple, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str] = []
    real = store_reader.sha256

    def counting(path: Path) -> str:
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(store_reader, "sha256", counting)
    store = KnowledgeStore(stores[("topk", "float16", 3, False)])
    data = StoreDataset(dataset(3, False), store)
    data.__getitems__(INDICES)
    data.__getitems__(INDICES)
    assert sorted(hashed) == [f"shard-0000{j}.safetensors" for j in range(4)]
    copy = pickle.loads(pickle.dumps(data))  # what a worker started by spawn gets
    assert copy.store._maps == {}  # maps, not pickled arrays: it maps the shards itself
    copy.__getitems__(INDICES)
    assert len(hashed) == 4


def test_ddp_shards_of_a_batch_are_the_batch(stores: dict[tuple, Path]) -> None:
    """Rank r of W reads its interleaved share: together the ranks' i-th batches hold exactly
    the examples (and Knowledge) of the i-th batch one process reads."""
    store = KnowledgeStore(stores[("topk", "float32", 3, True)])
    data = StoreDataset(dataset(3, True), store)
    whole = example_loader(data, 12, True, seed=4)
    parts = [example_loader(data, 4, True, seed=4, rank=r, world=3) for r in range(3)]
    for loader in (whole, *parts):
        loader.set_epoch(2)
    batches = list(zip(whole, *parts, strict=True))
    for n, (full, *shares) in enumerate(batches):
        merged = {int(i): (row, x) for share in shares for i, row, x in _rows(share)}
        ids = {int(i) for i in full["id"]}
        # the last global batch is 2 short; the ranks' last shares wrap around to fill it
        assert ids == set(merged) if n < len(batches) - 1 else ids < set(merged)
        for i, row, x in _rows(full):
            assert torch.equal(merged[int(i)][0], row)
            assert torch.equal(merged[int(i)][1], x)
    assert len(parts[0].sampler) == 17 and len(parts[0]) == len(whole) == 5  # 51 = 3 x 17


def _rows(batch: dict[str, Any]) -> list[tuple[Any, torch.Tensor, torch.Tensor]]:
    return list(
        zip(
            batch["id"],
            batch["knowledge"]["logits"],
            batch["views"]["student"],
            strict=True,
        )
    )


def test_loader_with_workers_gives_the_same_batches(stores: dict[tuple, Path]) -> None:
    store = KnowledgeStore(stores[("dense", "float16", 3, True)])
    data = StoreDataset(dataset(3, True), store)
    inline = example_loader(data, 8, True, seed=1)
    workers = example_loader(data, 8, True, seed=1, num_workers=2)
    for epoch in (0, 1):  # a new epoch's workers see the epoch's slots
        inline.set_epoch(epoch)
        workers.set_epoch(epoch)
        for a, b in zip(inline, workers, strict=True):
            assert_identical(a, b)
            # a worker's batch comes in one shared-memory block, not one per tensor
            blocks = {t.untyped_storage().data_ptr() for t in _tensors(b)}
            assert len(blocks) == 1 and b["id"].is_shared()
    assert isinstance(DataLoader(data, batch_size=4).__iter__().__next__(), dict)


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return [t for v in x for t in _tensors(v)] if isinstance(x, (list, tuple)) else []


def test_one_block_holds_a_batch_unchanged() -> None:
    Pair = namedtuple("Pair", "a b")
    batch = {
        "id": torch.arange(5),
        "views": {"x": torch.rand(5, 3, 2).transpose(1, 2), "text": ["a", "b"]},
        "pair": Pair(torch.ones(5, dtype=torch.bool), torch.rand(5, dtype=torch.float64)),
        "empty": torch.empty(5, 0),
    }
    packed = in_one_block(batch)
    assert_identical(packed, batch)
    assert isinstance(packed["pair"], Pair)
    assert len({t.untyped_storage().data_ptr() for t in _tensors(packed)}) == 1
    assert all(t.data_ptr() % 64 == 0 for t in _tensors(packed) if t.numel())


def digits_recipe(tmp_path: Path, workers: int) -> Recipe:
    raw: dict[str, Any] = yaml.safe_load((DIGITS / "kd.yaml").read_text())
    raw["teacher"].pop("weights")
    raw["name"] = f"workers{workers}"
    raw["data"].update(
        augment={"name": "crop_flip", "params": {"padding": 1}},
        augment_slots=2,
        limit_train=96,
        limit_eval=64,
        batch_size=32,
        num_workers=workers,
    )
    raw["train"].update(epochs=2, progress=False, device="cpu", log_every=1)
    raw["output"] = {"dir": str(tmp_path / "runs")}
    raw["store"] = {"path": str(tmp_path / "store"), "dtype": "float16", "shard_size": 40}
    raw["store"]["keys"] = {"logits": {"format": "topk", "k": 3}}
    return validate_recipe(raw)


def test_training_with_workers_equals_training_without(tmp_path: Path) -> None:
    """Same seed, same store: loading in two worker processes trains the same student, with
    the same loss at every step of both epochs, as loading in the main process (a worker that
    kept the first epoch's slots would differ in the second)."""
    recipes = [digits_recipe(tmp_path, workers) for workers in (0, 2)]
    cache_recipe(recipes[0], progress=False)
    runs = [Run(run_recipe(recipe).run_dir) for recipe in recipes]
    losses = [
        [
            r["loss"]
            for r in map(json.loads, run.metrics_file.read_text().splitlines())
            if r.get("kind") == "step"
        ]
        for run in runs
    ]
    assert len(losses[0]) == 6 and losses[0] == losses[1]
    assert runs[0].student_file.read_bytes() == runs[1].student_file.read_bytes()
