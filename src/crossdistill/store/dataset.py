"""Training examples whose teacher Knowledge comes from a store instead of the teacher."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from crossdistill.errors import StoreError
from crossdistill.store.reader import KnowledgeStore


class StoreDataset(Dataset):
    """``base``'s examples with ``"knowledge"`` read from ``store``.

    In each epoch example ``i`` uses the slot ``base`` would use online (``base.slot(i)``); its
    student view is re-created from the augmentation parameters recorded in the store, so it is
    exactly the view the stored teacher outputs belong to. The teacher view is dropped: nothing
    reads it.
    """

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

    @property
    def num_classes(self) -> int | None:
        return getattr(self.base, "num_classes", None)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = self.base.slot(i) if self.store.slots > 1 else 0
        example = self.base.example(i, self.store.aug(i, k))
        example["views"] = {"student": example["views"]["student"]}
        example["knowledge"] = self.store.knowledge(i, k)
        return example
