"""Training examples whose teacher Knowledge comes from a store instead of the teacher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from crossdistill.data.dataset import Collated, DistillDataset
from crossdistill.errors import StoreError
from crossdistill.store.reader import KnowledgeStore


class StoreDataset(Dataset):
    """``base``'s examples with ``"knowledge"`` read from ``store``.

    In each epoch example ``i`` uses the slot ``base`` would use online (``base.slot(i)``); its
    student view is re-created from the augmentation parameters recorded in the store, so it is
    exactly the view the stored teacher outputs belong to. The teacher view is dropped: nothing
    reads it.

    A DataLoader's batch (``__getitems__``) is read at once: the slots of the whole batch in one
    lookup, one gather per stored array per shard, the Knowledge decoded for all rows together
    and the examples built together (see ``DistillDataset.batch``); it equals the default
    collate of ``dataset[i]`` one by one, bit for bit. ``dataset[i]`` stays for random access.
    """

    # the batch-level path; False: a batch is read example by example (benchmarks compare)
    _batched = True

    def __init__(self, base: Any, store: KnowledgeStore) -> None:
        slots = getattr(base, "slots", None) or 1
        if store.num_examples != len(base) or store.slots != slots:
            raise StoreError(
                f"knowledge store {store.path} holds {store.num_examples} examples x "
                f"{store.slots} slots; the training data has {len(base)} x {slots}",
                hint="write the store from this recipe with `crossdistill cache RECIPE`",
            )
        self.base = base
        self.store = store
        self._data, self._positions = _unwrap(base)

    @property
    def num_classes(self) -> int | None:
        return getattr(self.base, "num_classes", None)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def prepare_workers(self) -> None:
        """Map and verify every shard before DataLoader workers start (they inherit both)."""
        self.store.open_all()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = self.base.slot(i) if self.store.slots > 1 else 0
        example = self.base.example(i, self.store.aug(i, k))
        example["views"] = {"student": example["views"]["student"]}
        example["knowledge"] = self.store.knowledge(i, k)
        return example

    def __getitems__(self, indices: Sequence[int]) -> Sequence[dict[str, Any]]:
        """The examples ``indices`` (a DataLoader's batch, in any order, repeats allowed)."""
        if not self._batched or self._data is None:
            return [self[i] for i in indices]
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx[np.argmax((idx < 0) | (idx >= n))])
            raise IndexError(f"example index {bad} out of range for {n} examples")
        at = self._positions[idx] if self._positions is not None else idx
        slots = self._data.slots_of(at) if self.store.slots > 1 else np.zeros_like(idx)
        rows = self.store.rows(idx, slots)
        batch = self._data.batch(at, rows.pop("aug"), views=("student",))
        batch["knowledge"] = self.store.decode(rows)
        return Collated(batch, lambda: [self[int(i)] for i in idx])


def _unwrap(base: Any) -> tuple[DistillDataset | None, np.ndarray | None]:
    """The DistillDataset under ``base``'s subsets and the position there of each of its
    examples (None: the same); ``(None, None)`` when ``base`` is another kind of dataset (or
    a subclass with examples of its own): its examples are then read one by one."""
    positions: np.ndarray | None = None
    data = base
    while isinstance(data, Subset):
        inner = np.asarray(data.indices, dtype=np.int64)
        positions = inner if positions is None else inner[positions]
        data = data.dataset
    if not isinstance(data, DistillDataset) or type(data).example is not DistillDataset.example:
        return None, None
    return data, positions
