"""Map-style datasets of distillation examples, and a loader whose order is seeded per epoch.

An example is ``{"id": int, "views": {name: x}, "target": int64 scalar, "aug": float32 params}``.
Augmentation parameters for example ``i`` in epoch ``e`` come from
``np.random.default_rng([seed, e, i])``: they do not depend on worker count or request order, so
a run is reproducible and a knowledge store can key cached teacher outputs by ``(id, aug)``.

With ``slots=K`` an example has only K recorded augmentations (slot ``k`` draws its parameters
as epoch ``k`` would) and each epoch picks one slot per example with :func:`slot_table`. This is
what a knowledge store holds teacher outputs for, so training online with ``slots=K`` and
training from a store of K slots see exactly the same views.

A DataLoader asks for a whole batch at once (``__getitems__``): the examples are built and
collated together (one gather and one conversion per tensor field, the augmentation's
parameters for the whole batch), and the loader's collate (:func:`collate_examples`) keeps that
batch as it is. It equals the default collate of the examples one by one, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from crossdistill.data.augment import Augmentation, NoAugment
from crossdistill.data.checks import check_index, check_slots, check_views, to_float
from crossdistill.data.split import DatasetSplit, Split, _fields
from crossdistill.errors import ConfigError, DataError

DEFAULT_VIEWS: tuple[str, ...] = ("teacher", "student")
_ALIGN = 64  # bytes: each tensor of a batch packed in one block starts on a cache line


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

    def slots_of(self, indices: np.ndarray) -> np.ndarray:
        """:meth:`slot` of each of ``indices`` (valid, non-negative) in the current epoch."""
        if self.slots is None:
            raise ConfigError("this dataset has no augment_slots; every epoch draws afresh")
        if self._slots_of_epoch is None:
            self._slots_of_epoch = slot_table(self.seed, self.epoch, len(self), self.slots)
        return self._slots_of_epoch[np.asarray(indices, dtype=np.int64)]

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

    # the batch-level path; False: a batch is built example by example (benchmarks compare)
    _batched = True

    def __getitems__(self, indices: Sequence[int]) -> Sequence[dict[str, Any]]:
        """The examples ``indices`` (a DataLoader's batch), built together (see :meth:`batch`)."""
        if not self._batched or type(self).example is not DistillDataset.example:
            return [self[i] for i in indices]  # a subclass's own examples: one by one
        idx = self.check_indices(indices)
        if self.augmentation.num_params == 0 or not len(idx):
            params = np.empty((len(idx), self.augmentation.num_params))
        else:  # what aug_params(i) draws: slot k as epoch k, or the current epoch
            keys = self.slots_of(idx) if self.slots is not None else [self.epoch] * len(idx)
            params = np.stack([self._draw(int(i), int(k)) for i, k in zip(idx, keys, strict=True)])
        return Collated(self.batch(idx, params), lambda: [self[i] for i in indices])

    def check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``indices`` as an int64 array of valid indices (negative count from the end)."""
        n = len(self)
        idx = np.array(indices, dtype=np.int64).reshape(-1)
        idx[idx < 0] += n
        outside = (idx < 0) | (idx >= n)
        if outside.any():
            check_index(int(np.asarray(indices).reshape(-1)[np.argmax(outside)]), n)
        return idx

    def batch(
        self,
        indices: np.ndarray,
        params: np.ndarray | None,
        views: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Examples ``indices`` (valid, see :meth:`check_indices`), row ``b`` seen through
        the augmentation ``params[b]``, collated: exactly ``default_collate`` of
        ``[self.example(i, params[b]) ...]``, built with one gather and one conversion per
        tensor field. ``params`` is ``(B, num_params)``; None for no parameters. ``views``:
        build only these views (default: all)."""
        idx = np.asarray(indices, dtype=np.int64)
        p = self.augmentation.num_params
        if params is None:
            params = np.empty((len(idx), 0), dtype=np.float64)
        params = np.asarray(params)
        if params.shape != (len(idx), p):
            raise DataError(
                f"{len(idx)} examples of {self.split.name!r}: got augmentation parameters of "
                f"shape {params.shape}, {self.augmentation!r} takes {p} per example",
                hint="recorded parameters must come from the same data configuration",
            )
        sources: dict[str, Any] = {}
        used: set[str] = set()

        def value(field: str) -> Any:
            if field not in sources:
                data = self.split.fields[field]
                if field in self._tensors:
                    x = to_float(data[torch.from_numpy(idx)])
                    sources[field] = self._augment(x, params) if p else x
                else:  # text, nested or lazily read fields: collated as the default collate does
                    sources[field] = [_as_value(data[int(i)]) for i in idx]
            source = sources[field]
            again = field in used  # every view gets its own tensor, as collating each view does
            used.add(field)
            if isinstance(source, torch.Tensor):
                return source.clone() if again else source
            return default_collate(source)

        built = {
            view: value(side) if isinstance(side, str) else {f: value(f) for f in side}
            for view, side in self._sides.items()
            if views is None or view in views
        }
        out: dict[str, Any] = {"id": torch.from_numpy(idx.copy()), "views": built}
        targets = self.split.targets
        if targets is not None:
            if isinstance(targets, torch.Tensor):
                target = targets[torch.from_numpy(idx)]
            elif isinstance(targets, np.ndarray):
                target = torch.as_tensor(targets[idx])
            else:
                target = torch.stack([torch.as_tensor(targets[int(i)]) for i in idx])
            out["target"] = target if target.is_floating_point() else target.to(torch.int64)
        out["aug"] = torch.as_tensor(params, dtype=torch.float32)
        return out

    def _augment(self, x: torch.Tensor, params: np.ndarray) -> torch.Tensor:
        """``x`` ``(B, ...)``, row ``b`` transformed by ``params[b]``: in one call when the
        augmentation has ``apply_batch(x, params)``, otherwise row by row."""
        apply_batch = getattr(self.augmentation, "apply_batch", None)
        if apply_batch is not None:
            return apply_batch(x, params)
        apply = self.augmentation.apply
        return torch.stack([apply(x[b], params[b]) for b in range(len(x))]) if len(x) else x

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


class Collated(Sequence):
    """A batch of examples built already collated (``batch``). As a sequence it is the
    examples one by one (``examples`` builds them, the first time one is asked for), so a
    DataLoader with any other collate still gets what ``dataset[i]`` gives;
    :func:`collate_examples` takes ``batch`` as it is."""

    def __init__(self, batch: dict[str, Any], examples: Callable[[], list[Any]]) -> None:
        self.batch = batch
        self._examples = examples
        self._built: list[Any] | None = None

    def _items(self) -> list[Any]:
        if self._built is None:
            self._built = self._examples()
        return self._built

    def __len__(self) -> int:
        return len(self._items())

    def __getitem__(self, b: Any) -> Any:
        return self._items()[b]


def collate_examples(examples: Sequence[Any]) -> Any:
    """The collate of :func:`example_loader`: a :class:`Collated` batch as it is, anything
    else by ``default_collate``. In a DataLoader worker the batch's tensors are then copied
    into one shared-memory block (:func:`in_one_block`)."""
    collated = isinstance(examples, Collated)
    batch = examples.batch if collated else default_collate(examples)  # type: ignore[union-attr]
    return in_one_block(batch) if get_worker_info() is not None else batch


def in_one_block(batch: Any) -> Any:
    """``batch`` with every tensor copied into one block of shared memory (contiguous views,
    values unchanged). A worker hands each shared block to the main process as a file
    descriptor, one socket round trip each: one block per batch instead of one per tensor
    (ids, each view, targets, augmentation, each Knowledge key) saves most of that."""
    tensors: list[torch.Tensor] = []

    def find(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            tensors.append(x)
        elif isinstance(x, Mapping):
            for v in x.values():
                find(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                find(v)

    find(batch)
    if len(tensors) < 2:
        return batch
    offsets, size = [], 0
    for t in tensors:
        offsets.append(size)
        size += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
    block = torch.UntypedStorage(size).share_memory_()
    copies = {}
    for t, offset in zip(tensors, offsets, strict=True):
        view = torch.empty(0, dtype=t.dtype).set_(block, offset // t.element_size(), t.shape)
        copies[id(t)] = view.copy_(t)

    def put(x: Any) -> Any:
        # containers rebuilt as the default collate builds them (their own type where it can)
        if isinstance(x, torch.Tensor):
            return copies[id(x)]
        if isinstance(x, Mapping):
            items = {k: put(v) for k, v in x.items()}
            try:
                return type(x)(items)
            except TypeError:
                return items
        if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple
            return type(x)(*(put(v) for v in x))
        if isinstance(x, (list, tuple)):
            return type(x)(put(v) for v in x)
        return x

    return put(batch)


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
    """A DataLoader with :meth:`set_epoch`, which moves both its sampler and its dataset on.

    Its workers are not persistent: each epoch's workers copy the dataset when the epoch's
    iterator starts, so they see the epoch ``set_epoch`` selected (a persistent worker would
    keep its first epoch's copy); starting them costs a few milliseconds per epoch. Before
    they start, a dataset with ``prepare_workers()`` (a store-backed one: it maps and verifies
    its shards) does once the work every worker would otherwise repeat.
    """

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order and augmentation parameters of ``epoch``."""
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Any:
        prepare = getattr(self.dataset, "prepare_workers", None)
        if self.num_workers > 0 and callable(prepare):
            prepare()
        return super().__iter__()


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

    Call ``loader.set_epoch(e)`` before each epoch. Batches are dicts as the default collate
    makes them: ``{"id": (B,), "views": {name: (B, C, H, W)}, "target": (B,), "aug": (B, P)}``
    (a dataset that builds whole batches, ``__getitems__``, gives them already collated).
    With ``world > 1`` this rank sees its share of each epoch (see :class:`EpochSampler`);
    ``batch_size`` is then the per-rank batch. With ``num_workers`` > 0, worker processes
    build the next batches while the step runs (``prefetch_factor`` batches each ahead);
    ``pin_memory`` (on CUDA) copies them to page-locked memory for a non-blocking transfer.
    """
    sampler = EpochSampler(len(dataset), shuffle, seed, rank, world)  # type: ignore[arg-type]
    return EpochLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        collate_fn=collate_examples,
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


class SideBatches:
    """``loader``'s batches with the view of ``side`` (a peer's) given to the student, so that
    what evaluates a student evaluates that peer; a batch without such a view is unchanged
    (the peer reads the student's view). Everything else is the loader's."""

    def __init__(self, loader: Any, side: str) -> None:
        self.loader, self.side = loader, side

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            views = batch["views"]
            if self.side in views:
                batch = {**batch, "views": {**views, "student": views[self.side]}}
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)
