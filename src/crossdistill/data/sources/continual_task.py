"""``continual_task``: the examples of one task (or several) of a task sequence made from any
labelled source, as continual learning trains and evaluates on them.

Class-incremental (``scenario: class``, e.g. Split MNIST: Zenke et al. 2017, arXiv:1703.04200):
task ``t`` holds the examples whose class is in its group; ``tasks: N`` cuts the data's classes
into N consecutive groups, or the groups are listed. Domain-incremental (``scenario: domain``):
every task holds every class, from its own share of each split (a seeded permutation cut into N
near-equal, disjoint parts); ``shift: permute`` gives each task after the first a fixed, seeded
permutation of every input's elements (Permuted MNIST, Goodfellow et al. 2013,
arXiv:1312.6211), so that the tasks differ in their inputs, not only in their examples.

``replay: N`` adds to a training split N examples of the earlier tasks (an experience-replay
buffer; Rolnick et al. 2019, arXiv:1811.11682), class-balanced and drawn by ``seed``; each one
keeps its own task's shift. ``meta["task"]`` says which task each example comes from.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

# The package, not ``load_source`` itself: this module is imported while the package's
# ``__init__`` registers its sources, before ``load_source`` is defined there.
import crossdistill.data.sources as sources
from crossdistill.data.sources.base import DATA_SOURCES
from crossdistill.data.split import Split
from crossdistill.errors import ConfigError, DataError

Tasks = int | list[list[int]]


def class_labels(split: Split) -> np.ndarray | None:
    """The split's targets as int64 class indices (``None`` when they are not one class label
    per example held in memory)."""
    targets = split.targets
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().numpy()
    if not isinstance(targets, (np.ndarray, list, tuple)):
        return None
    values = np.asarray(targets)
    if values.ndim != 1 or values.dtype.kind not in "iu":
        return None
    return values.astype(np.int64)


def class_groups(tasks: Tasks, classes: Sequence[int]) -> list[list[int]]:
    """The classes of each task: ``tasks`` consecutive groups of ``classes`` (the first groups
    one larger when they do not divide evenly), or the groups ``tasks`` lists."""
    if isinstance(tasks, list):
        return [list(g) for g in tasks]
    if tasks > len(classes):
        raise ConfigError(
            f"continual: {tasks} class-incremental tasks need at least {tasks} classes, the "
            f"data has {len(classes)}",
            hint="use fewer tasks, or list the class groups (tasks: [[0, 1], [2, 3]])",
        )
    return [g.tolist() for g in np.array_split(np.asarray(classes, dtype=np.int64), tasks)]


def data_classes(split: Split, labels: np.ndarray) -> list[int]:
    """The classes a split's task groups are cut from: its class names' indices, else the
    labels it holds."""
    if split.class_names:
        return list(range(len(split.class_names)))
    return sorted(set(labels.tolist()))


def task_members(split: Split, scenario: str, tasks: Tasks, seed: int) -> list[np.ndarray]:
    """The (sorted) example indices of each task in ``split``."""
    if scenario == "class":
        labels = class_labels(split)
        if labels is None:
            raise DataError(
                f"continual: {split.name!r} has no class label per example, and "
                "class-incremental tasks are made of classes",
                hint="use a source whose targets are class indices, or `scenario: domain`",
            )
        classes = data_classes(split, labels)
        groups = class_groups(tasks, classes)
        if split.class_names:
            unknown = sorted({c for g in groups for c in g} - set(classes))
            if unknown:
                raise ConfigError(
                    f"continual: tasks name classes {unknown}, which {split.name!r} does not "
                    f"have (its classes are 0..{len(classes) - 1})",
                    hint="list only the data's classes in continual.tasks",
                )
        return [np.flatnonzero(np.isin(labels, g)) for g in groups]
    if not isinstance(tasks, int):
        raise ConfigError("continual: a domain-incremental sequence gives its number of tasks")
    if tasks > len(split):
        raise DataError(f"continual: {len(split)} examples of {split.name!r} for {tasks} tasks")
    # each split draws its own shares, the same ones for the same seed
    order = np.random.default_rng([seed, zlib.crc32(split.name.encode())]).permutation(len(split))
    return [np.sort(part) for part in np.array_split(order, tasks)]


def replay_draw(
    labels: np.ndarray | None, pool: np.ndarray, n: int, seed: int | Sequence[int]
) -> np.ndarray:
    """``n`` of the example indices ``pool``, class-balanced: the classes take turns (in a
    seeded order), each giving its next example in a seeded order, until ``n`` are drawn (a
    class that runs out leaves its turns to the others). Without labels, a plain draw."""
    if n > len(pool):
        raise DataError(f"a replay buffer of {n} examples draws from only {len(pool)}")
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.permutation(pool)[:n])
    queues = [rng.permutation(pool[labels[pool] == c]).tolist() for c in np.unique(labels[pool])]
    queues = [queues[i] for i in rng.permutation(len(queues))]
    drawn: list[int] = []
    while len(drawn) < n:
        for queue in queues:
            if queue and len(drawn) < n:
                drawn.append(queue.pop())
    return np.sort(np.asarray(drawn, dtype=np.int64))


def replay_repeats(own: int, buffer: int, share: float | None) -> int:
    """How many times each of ``buffer`` replayed examples appears beside ``own`` new ones so
    that the buffer makes up the nearest ``share`` of them (1 without a share)."""
    if share is None or buffer == 0:
        return 1
    return max(1, round(share * own / ((1 - share) * buffer)))


def permuted(x: torch.Tensor, task: int, seed: int) -> torch.Tensor:
    """``x`` (examples first) with task ``task``'s fixed permutation of each example's elements
    (task 1: unchanged)."""
    if task == 1:
        return x
    size = int(np.prod(x.shape[1:]))
    perm = torch.from_numpy(np.random.default_rng([seed, task]).permutation(size))
    return x.reshape(len(x), size)[:, perm].reshape(x.shape)


class _Rows:
    """The rows ``indices`` of a column that is neither a tensor nor a list (read lazily)."""

    def __init__(self, column: Any, indices: np.ndarray) -> None:
        self.column, self.indices = column, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.column[int(self.indices[i])]


def _take(column: Any, indices: np.ndarray) -> Any:
    if isinstance(column, torch.Tensor):
        return column[torch.from_numpy(indices)]
    if isinstance(column, np.ndarray):
        return column[indices]
    if isinstance(column, (list, tuple)):
        return [column[i] for i in indices.tolist()]
    return _Rows(column, indices)


def _gathered(
    split: Split, parts: list[tuple[int, np.ndarray]], shift: str, seed: int, name: str
) -> Split:
    """The examples ``(task, indices)`` of ``parts``, in that order, each field shifted as its
    task says; the rest of the split (class names, sides) is the split's."""
    every = np.concatenate([idx for _, idx in parts]).astype(np.int64)
    out = copy.copy(split)  # the same kind of split (its sides, class names), shared
    if shift == "permute":
        bad = [k for k, v in split.fields.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise DataError(
                f"continual: shift permute permutes tensor inputs, and fields {bad} of "
                f"{split.name!r} are not tensors",
                hint="use `shift: none`, or a source of tensor inputs",
            )
        out.fields = {
            k: torch.cat([permuted(_take(v, idx), t, seed) for t, idx in parts])
            for k, v in split.fields.items()
        }
    else:
        out.fields = {k: _take(v, every) for k, v in split.fields.items()}
    if split.targets is not None:
        out.targets = _take(split.targets, every)
    if split.groups is not None:
        out.groups = _take(split.groups, every)
    task = torch.cat([torch.full((len(idx),), t, dtype=torch.int64) for t, idx in parts])
    out.meta = {**{k: _take(v, every) for k, v in split.meta.items()}, "task": task}
    out.name = name
    out._check()
    return out


@DATA_SOURCES.register("continual_task")
def load(
    split: str,
    source: str | Callable[..., Split],
    task: int | list[int],
    params: dict[str, Any] | None = None,
    scenario: Literal["class", "domain"] = "class",
    tasks: Tasks = 5,
    seed: int = 0,
    shift: Literal["none", "permute"] = "none",
    replay: int = 0,
    replay_splits: list[str] | None = None,
    replay_share: float | None = None,
) -> Split:
    """The examples of task ``task`` (from 1; a list: those of each task listed) of the
    sequence of ``tasks`` made from the ``split`` of the source ``source`` (a registered name
    or ``package.module:Callable``, built with ``params``). ``scenario: class``: each task the
    examples of its classes (``tasks: N`` consecutive groups of the classes, or the groups
    listed); ``domain``: every class, from each task's own seeded, disjoint share of the split,
    with ``shift: permute`` a fixed permutation of each input's elements per task after the
    first (Permuted MNIST). ``meta["task"]`` holds each example's task.

    ``replay`` > 0 (for one task ``t`` >= 2, in the splits ``replay_splits``, default
    ``["train"]``): ``replay`` examples of tasks ``1 .. t-1`` added, class-balanced, drawn by
    ``seed`` (and ``t``); more than those tasks hold is an error. ``replay_share`` in (0, 1):
    each buffered example repeated ``k`` times, ``k`` the whole number (at least 1) that brings
    the buffer nearest that share of the split (experience replay, Chaudhry et al. 2019,
    arXiv:1902.10486, draws half of every batch from its buffer); unset: each once."""
    if replay < 0:
        raise ConfigError(f"continual_task: replay {replay} must be 0 or more examples")
    if replay_share is not None and not 0 < replay_share < 1:
        raise ConfigError(f"continual_task: replay_share {replay_share} must lie in (0, 1)")
    inner = sources.load_source(source, split, **(params or {}))
    members = task_members(inner, scenario, tasks, seed)
    wanted = [task] if isinstance(task, int) else list(task)
    bad = [t for t in wanted if not 1 <= t <= len(members)]
    if bad or not wanted:
        raise ConfigError(
            f"continual_task: task {task} is not a task of a sequence of {len(members)}",
            hint=f"tasks are numbered 1..{len(members)}",
        )
    shift = shift if scenario == "domain" else "none"
    parts = [(t, members[t - 1]) for t in wanted]
    if replay and split in (["train"] if replay_splits is None else replay_splits):
        if not isinstance(task, int):
            raise ConfigError("continual_task: a replay buffer goes with one task, not a list")
        if task > 1:
            earlier = np.concatenate(members[: task - 1])
            if replay > len(earlier):
                raise DataError(
                    f"continual: a replay buffer of {replay} examples is larger than the "
                    f"{len(earlier)} examples of {split!r} that tasks 1..{task - 1} hold",
                    hint=f"use continual.replay of at most {len(earlier)}",
                )
            drawn = replay_draw(class_labels(inner), earlier, replay, [seed, task])
            origin = np.zeros(len(inner), dtype=np.int64)
            for t, idx in enumerate(members, 1):
                origin[idx] = t
            repeat = replay_repeats(len(parts[0][1]), replay, replay_share)
            parts += [(t, np.tile(drawn[origin[drawn] == t], repeat)) for t in range(1, task)]
    label = "+".join(str(t) for t in wanted)
    return _gathered(inner, parts, shift, seed, f"continual_task{label}/{inner.name}")
