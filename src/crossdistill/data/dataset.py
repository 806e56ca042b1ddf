"""Map-style datasets of distillation examples, and a loader whose order is seeded per epoch.

An example is ``{"id": int, "views": {name: x}, "target": int64 scalar, "aug": float32 params}``.
Augmentation parameters for example ``i`` in epoch ``e`` come from
``np.random.default_rng([seed, e, i])``: they do not depend on worker count or request order, so
a run is reproducible and a knowledge store can key cached teacher outputs by ``(id, aug)``.

With ``slots=K`` an example has only K recorded augmentations (slot ``k`` draws its parameters
as epoch ``k`` would) and each epoch picks one slot per example with :func:`slot_table`. This is
what a knowledge store holds teacher outputs for, so training online with ``slots=K`` and
training from a store of K slots see exactly the same views.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from crossdistill.data.augment import Augmentation, NoAugment
from crossdistill.data.checks import check_index, check_slots, check_views, to_float
from crossdistill.data.split import DatasetSplit, Split, _fields
from crossdistill.errors import ConfigError, DataError

DEFAULT_VIEWS: tuple[str, ...] = ("teacher", "student")


def slot_table(seed: int, epoch: int, n: int, slots: int) -> np.ndarray:
    """The recorded augmentation (``0..slots-1``) each of ``n`` examples uses in ``epoch``."""
    if slots == 1:
        return np.zeros(n, dtype=np.int64)
    return np.random.default_rng([seed, epoch, n, slots]).integers(0, slots, size=n)


class DistillDataset(Dataset):
    """Examples ``{id, views: {view: value}, target?, aug}`` of any :class:`Split`.

    Each view (``"teacher"``, ``"student"``, ...) gets what the split's sides say it reads: a
    tensor (uint8 images become float32 in [0, 1]), a string, a waveform, or a dict of several
    fields. The augmentation transforms the tensor fields the views read; every view of one
    field sees the same augmented tensor (each model's own pipeline then normalises or resizes
    it). Call :meth:`set_epoch` before iterating an epoch; DataLoader workers copy the dataset
    when the iterator starts, so they see it too. ``slots=K`` limits each example to K recorded
    augmentations (see the module docstring).
    """

    def __init__(
        self,
        split: Split,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        views: Sequence[str] = DEFAULT_VIEWS,
        slots: int | None = None,
    ) -> None:
        self.split = split
        self.augmentation: Augmentation = augmentation if augmentation is not None else NoAugment()
        self.seed = int(seed)
        self.views = check_views(views)
        self.slots = check_slots(slots)
        self.epoch = 0
        self._slots_of_epoch: np.ndarray | None = None
        if self.seed < 0:
            raise ConfigError(f"seed must be non-negative, got {seed}")
        self._sides = {view: split.side(view) for view in self.views}
        read = dict.fromkeys(f for side in self._sides.values() for f in _fields(side))
        # the tensor fields are what an augmentation transforms
        self._tensors = [f for f in read if isinstance(split.fields[f], torch.Tensor)]
        if self.augmentation.num_params and not self._tensors:
            raise ConfigError(
                f"split {split.name!r} has no tensor field to augment (its views read "
                f"{list(read)}), got {self.augmentation!r}",
                hint="leave `data.augment` unset for this data",
            )

    @property
    def class_names(self) -> list[str]:
        return self.split.class_names

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation parameters ``__getitem__`` draws."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)
        self._slots_of_epoch = None

    def aug_params(self, i: int, epoch: int | None = None) -> np.ndarray:
        """The augmentation parameters of example ``i`` in ``epoch`` (default: the current one)."""
        i = check_index(i, len(self))
        epoch = self.epoch if epoch is None else epoch
        if self.slots is not None:
            return self.slot_params(i, self.slot(i, epoch))
        return self._draw(i, epoch)

    def slot(self, i: int, epoch: int | None = None) -> int:
        """Which of the ``slots`` recorded augmentations example ``i`` uses in ``epoch``."""
        if self.slots is None:
            raise ConfigError("this dataset has no augment_slots; every epoch draws afresh")
        if epoch is not None and epoch != self.epoch:
            return int(slot_table(self.seed, epoch, len(self), self.slots)[i])
        if self._slots_of_epoch is None:  # one vectorised draw per epoch, not one per example
            self._slots_of_epoch = slot_table(self.seed, self.epoch, len(self), self.slots)
        return int(self._slots_of_epoch[i])

    def slot_params(self, i: int, k: int) -> np.ndarray:
        """The parameters of recorded augmentation ``k`` of example ``i`` (drawn as epoch ``k``)."""
        if int(k) < 0 or (self.slots is not None and int(k) >= self.slots):
            raise IndexError(f"slot {k} out of range for {self.slots} slots")
        return self._draw(check_index(i, len(self)), k)

    def _draw(self, i: int, key: int) -> np.ndarray:
        if self.augmentation.num_params == 0:
            return np.empty(0, dtype=np.float64)
        rng = np.random.default_rng([self.seed, key, i])
        shape = tuple(self.split.fields[self._tensors[0]].shape[1:])
        return self.augmentation.sample(rng, shape)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.example(i, self.aug_params(i))

    def example(self, i: int, params: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """Example ``i`` seen through the augmentation ``params`` (e.g. recorded in a store)."""
        i = check_index(i, len(self))
        if np.asarray(params).size != self.augmentation.num_params:
            raise DataError(
                f"example {i} of {self.split.name!r}: got {np.asarray(params).size} "
                f"augmentation parameters, {self.augmentation!r} takes "
                f"{self.augmentation.num_params}",
                hint="recorded parameters must come from the same data configuration",
            )
        values: dict[str, Any] = {}

        def value(field: str) -> Any:
            if field not in values:
                x = _as_value(self.split.fields[field][i])
                if field in self._tensors and self.augmentation.num_params:
                    x = self.augmentation.apply(x, params)
                values[field] = x
            return values[field]

        views = {
            view: value(side) if isinstance(side, str) else {f: value(f) for f in side}
            for view, side in self._sides.items()
        }
        out: dict[str, Any] = {"id": i, "views": views}
        if self.split.targets is not None:
            target = torch.as_tensor(self.split.targets[i])
            out["target"] = target if target.is_floating_point() else target.to(torch.int64)
        out["aug"] = torch.as_tensor(params, dtype=torch.float32)
        return out

    def example_size(self, i: int) -> int:
        """Characters of text the teacher reads in example ``i``: a store writer batches texts
        of similar length together (0 for tensors: their order is kept)."""
        return self.split.size(i) if "teacher" in self._sides else 0

    def __repr__(self) -> str:
        return (
            f"DistillDataset({self.split.name!r}, n={len(self)},"
            f" augmentation={self.augmentation!r}, seed={self.seed}, views={list(self.views)},"
            f" slots={self.slots})"
        )


def _as_value(x: Any) -> Any:
    """A field's value as a view holds it, never aliasing the split's data: tensors as float32
    copies (uint8 images in [0, 1]), NumPy arrays as tensors, lists as tuples, everything else
    (strings) as it is."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if isinstance(x, list):
        return tuple(x)
    return to_float(x) if isinstance(x, torch.Tensor) else x


def make_dataset(
    split: Split,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    slots: int | None = None,
    views: Sequence[str] = DEFAULT_VIEWS,
) -> DistillDataset:
    """The examples of ``split`` (kept for callers that build datasets from recipes)."""
    return DistillDataset(split, augmentation=augmentation, seed=seed, views=views, slots=slots)


def as_distill_dataset(data: Any, views: Sequence[str] = DEFAULT_VIEWS) -> DistillDataset:
    """``data`` as a dataset of distillation examples: a DistillDataset is returned unchanged, a
    Split is wrapped without augmentation, any other map-style dataset of ``(input, target)``
    pairs (e.g. a TensorDataset) is read through a :class:`DatasetSplit`."""
    if isinstance(data, DistillDataset):
        return data
    if not isinstance(data, Split):
        data = DatasetSplit(data)
    return DistillDataset(data, views=views)


class EpochSampler(Sampler[int]):
    """Indices in an order fixed by ``(seed, epoch)``: resuming at epoch ``e`` replays it.

    Under data parallelism (``world > 1``) rank ``r`` takes every ``world``-th index from ``r``
    (the order padded by wrapping around to a multiple of ``world``): with a per-rank batch of
    ``B / world`` the ranks' ``i``-th batches together are exactly the ``i``-th batch of ``B``
    one process would take. ``skip(n)`` starts the next pass ``n`` indices in (a resumed epoch).
    """

    def __init__(
        self, n: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        super().__init__()
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} is outside a world of {world} processes")
        self.n = int(n)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world = int(rank), int(world)
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, n: int) -> None:
        """Leave out the first ``n`` indices of the next pass only."""
        self._skip = int(n)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world > 1:
            order = (order + order[: len(self) * self.world - self.n])[self.rank :: self.world]
        skip, self._skip = self._skip, 0
        return iter(order[skip:])

    def __len__(self) -> int:
        return -(-self.n // self.world)


class EpochLoader(DataLoader):
    """A DataLoader with :meth:`set_epoch`, which moves both its sampler and its dataset on."""

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order and augmentation parameters of ``epoch``."""
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def example_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> EpochLoader:
    """A loader over ``dataset`` whose order depends only on ``(seed, epoch)``.

    Call ``loader.set_epoch(e)`` before each epoch. Batches are dicts collated by the default
    collate: ``{"id": (B,), "views": {name: (B, C, H, W)}, "target": (B,), "aug": (B, P)}``.
    With ``world > 1`` this rank sees its share of each epoch (see :class:`EpochSampler`);
    ``batch_size`` is then the per-rank batch.
    """
    sampler = EpochSampler(len(dataset), shuffle, seed, rank, world)  # type: ignore[arg-type]
    return EpochLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        # DataLoader draws a worker base seed from this generator on every iteration; without
        # one it would consume the global torch RNG and shift dropout etc. between runs.
        generator=torch.Generator().manual_seed(int(seed)),
    )


def preview_batch(dataset: Dataset, n: int = 2) -> dict[str, Any]:
    """The first ``n`` examples collated into a batch (for checks before training)."""
    return default_collate([dataset[i] for i in range(min(n, len(dataset)))])  # type: ignore[arg-type]


def loader_preview(loader: Any, n: int = 2) -> dict[str, Any]:
    """A small batch of ``loader`` for checks before training: its dataset's first ``n``
    examples, or, from your own DataLoader (whose dataset crossdistill cannot index), its first
    batch."""
    if isinstance(loader, ExampleBatches):
        return next(iter(loader))
    return preview_batch(loader.dataset, n)


def example_batch(batch: Any) -> dict[str, Any]:
    """A batch of your own DataLoader in crossdistill's form ``{"views": {side: x}, "target":
    y}``: an ``(x, y)`` pair (every side reads ``x``), a dict of sides and an optional
    ``"target"``, or a batch already in that form."""
    if isinstance(batch, Mapping):
        if "views" in batch:
            return dict(batch)
        out: dict[str, Any] = {"views": {k: v for k, v in batch.items() if k != "target"}}
        if "target" in batch:
            out["target"] = batch["target"]
        return out
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        return {"views": {"teacher": x, "student": x}, "target": y}
    raise DataError(
        f"a batch of the DataLoader is a {type(batch).__name__}, not an (x, y) pair or a dict",
        hint="yield (x, y) pairs, or dicts {'teacher': x, 'student': x, 'target': y}",
    )


class ExampleBatches:
    """Your own DataLoader, its batches put in crossdistill's form (see :func:`example_batch`).
    ``set_epoch`` reaches its sampler (e.g. a DistributedSampler) when it has one."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.dataset = loader.dataset
        self.sampler = loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (example_batch(batch) for batch in self.loader)

    def set_epoch(self, epoch: int) -> None:
        for owner in (self.loader, self.sampler, self.dataset):
            if hasattr(owner, "set_epoch"):
                owner.set_epoch(epoch)
                return
