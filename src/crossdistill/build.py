"""From a recipe to the objects it names: the Distiller (teacher, student, losses), datasets and
loaders, and the knowledge store's fingerprint and codecs; :func:`preflight`, the checks on
real data that ``run`` and ``distill()`` make before a run folder exists; and the store checks
that ``run`` and ``cache`` make before any expensive work (:func:`check_stores_early`,
:func:`check_store_plans`).

Everything here builds or checks; nothing trains or writes. ``pipeline`` (recipe → finished
run), ``api`` (``distill()``) and ``runs`` (reopening a run's student, teacher and data) build
through these functions.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from crossdistill._util.device import to_device
from crossdistill._util.hashing import digest, weights_digest
from crossdistill.config import (
    LossSpec,
    ModelSpec,
    PluginSpec,
    Recipe,
    SidesSpec,
    TeacherSpec,
    ValidationSpec,
)
from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.ema import EMATeacher
from crossdistill.core.taps import Tap
from crossdistill.core.wrappers import EnsembleTeacher, ModelWrapper, Student, Teacher
from crossdistill.data import build_augmentation, example_loader, load_source
from crossdistill.data.dataset import DEFAULT_VIEWS, loader_preview, make_dataset
from crossdistill.data.grouping import group_key
from crossdistill.data.steps import build_pipeline
from crossdistill.errors import ConfigError, CrossDistillError, DataError
from crossdistill.evaluate import check_evaluable
from crossdistill.losses import build_loss
from crossdistill.models.registry import MODELS, build_model, load_weights
from crossdistill.store import KeyCodec, KnowledgeStore, StoreDataset
from crossdistill.store.manifest import MANIFEST, PLAN, read_manifest

log = logging.getLogger(__name__)


def build_wrapper(cls: type[ModelWrapper], spec: ModelSpec, where: str) -> ModelWrapper:
    """A Student/Teacher from a model spec: model, weights, pipeline, taps."""
    model = build_model(spec.model, spec.params, where)
    if spec.weights is not None:
        load_weights(model, spec.weights, where=f"{where}.weights")
    taps = [Tap(**t.model_dump()) for t in spec.taps]
    pipeline = build_pipeline(spec.pipeline, f"{where}.pipeline")
    return cls(model, outputs=spec.outputs, taps=taps, pipeline=pipeline)


def build_teacher(spec: TeacherSpec, student: ModelWrapper | None = None) -> Teacher | None:
    """The teacher a recipe names. A momentum teacher (``ema_of: student``) is made from
    ``student``, the wrapper it averages; without one there is none to make (None): its weights
    exist only in a run's checkpoints."""
    if spec.ema_of is not None:
        if student is None:
            return None
        taps = [Tap(**t.model_dump()) for t in spec.taps]
        return EMATeacher(student, spec.decay, spec.warmup, taps=taps)
    if spec.members:
        members = [
            _checked(build_wrapper(Teacher, m, f"teacher.members[{i}]"), f"teacher.members[{i}]")
            for i, m in enumerate(spec.members)
        ]
        return EnsembleTeacher(members, spec.member_weights)  # type: ignore[arg-type]
    teacher = build_wrapper(Teacher, spec.as_model_spec(), "teacher")
    return _checked(teacher, "teacher")  # type: ignore[return-value]


def _checked(wrapper: ModelWrapper, where: str) -> ModelWrapper:
    """``wrapper``, once a model that knows its output names (an ONNX graph: ``check_outputs``)
    has confirmed that ``outputs:`` names only those, before any data is read."""
    check = getattr(wrapper.model, "check_outputs", None)
    if callable(check):
        check(wrapper.outputs, where)
    return wrapper


def build_term(spec: LossSpec, where: str) -> Term:
    """A Distiller term from a recipe's loss entry (the adapter is built later, from shapes)."""
    adapter = spec.adapter.model_dump() if isinstance(spec.adapter, PluginSpec) else spec.adapter
    loss = build_loss(spec.name, spec.params, where=where)
    sides = spec.sides or SidesSpec()
    return Term(
        spec.term,
        loss,
        spec.weight,
        adapter,
        spec.schedule,
        sides=(sides.student, sides.teacher),
        detach=sides.detach,
    )


def reads_teacher(spec: LossSpec, where: str) -> bool:
    """Whether a recipe's loss term reads the frozen teacher (a distillation term): its
    teacher side is the teacher and its loss needs something from it. What is left of a
    recipe without a teacher (born-again generation 0, a continual sequence's first task)."""
    if spec.sides is not None and spec.sides.teacher != "teacher":
        return False
    return bool(build_loss(spec.name, spec.params, where=where).needs().teacher)


def trained_spec(spec: ModelSpec, weights: Path) -> ModelSpec:
    """``spec`` holding the trained ``weights`` (a run's student.safetensors): a model whose
    ``init_from`` builds an expensive initialisation (a token table from a teacher) skips it,
    the trained weights replace it."""
    params = dict(spec.params)
    if MODELS.accepts(spec.model, "init_from"):
        params["init_from"] = None
    return spec.model_copy(update={"params": params, "weights": weights})


def build_distiller(recipe: Recipe) -> Distiller:
    terms = [build_term(spec, f"losses[{i}]") for i, spec in enumerate(recipe.losses)]
    student = build_wrapper(Student, recipe.student, "student")
    peers = {
        name: build_wrapper(Student, spec, f"peers.{name}") for name, spec in recipe.peers.items()
    }
    teacher = build_teacher(recipe.teacher, student) if recipe.teacher else None
    # a store without a teacher: the teacher's outputs come from the store alone
    given = recipe.store is not None and teacher is None
    return Distiller(
        student,  # type: ignore[arg-type]
        terms,
        teacher=teacher,
        knowledge_given=given,
        peers=peers,  # type: ignore[arg-type]
    )


class Limited(Subset):
    """The examples ``indices`` of a dataset (kept in the dataset's order): example ``i`` is
    ``dataset[indices[i]]``. The methods that take an example's position (``example``,
    ``slot``, ``slot_params``, ``aug_params``, ``example_size``, ``slots_of``, ``batch``:
    what a knowledge store's writer and reader call) take it here too; everything else
    (``set_epoch``, ``split``, ``class_names``, ...) is the dataset's."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        super().__init__(dataset, list(indices))

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def example(self, i: int, params: Any) -> dict[str, Any]:
        return self.dataset.example(self.indices[i], params)

    def slot(self, i: int, epoch: int | None = None) -> int:
        return self.dataset.slot(self.indices[i], epoch)

    def slot_params(self, i: int, k: int) -> Any:
        return self.dataset.slot_params(self.indices[i], k)

    def aug_params(self, i: int, epoch: int | None = None) -> Any:
        return self.dataset.aug_params(self.indices[i], epoch)

    def example_size(self, i: int) -> int:
        return self.dataset.example_size(self.indices[i])

    def slots_of(self, positions: Any) -> Any:
        return self.dataset.slots_of(self._mapped(positions))

    def batch(self, positions: Any, params: Any, views: Any = None) -> dict[str, Any]:
        return self.dataset.batch(self._mapped(positions), params, views)

    def _mapped(self, positions: Any) -> np.ndarray:
        return np.asarray(self.indices, dtype=np.int64)[np.asarray(positions, dtype=np.int64)]


class Head(Limited):
    """The first ``n`` examples of a dataset."""

    def __init__(self, dataset: Any, n: int) -> None:
        super().__init__(dataset, range(min(n, len(dataset))))


def limit_indices(dataset: Any, n: int, mode: str = "random", seed: int = 0) -> list[int] | None:
    """Which ``n`` examples of ``dataset`` a ``data.limit_train`` of ``n`` keeps, in order
    (``None``: all of them, ``n`` >= its length).

    ``first``: the first ``n``. ``random``: ``n`` drawn with a generator seeded by ``seed``
    alone (never the global RNG), so every DDP process draws the same. When the split holds
    its targets as class labels (an integer column in memory: only the targets are read, no
    example) the draw is stratified: each class keeps ``round(n * its share)`` examples (the
    largest remainders settle the total at exactly ``n``) and, when ``n`` allows, at least
    one. Other targets (regression values, a lazily read column, none) draw plainly.
    """
    total = len(dataset)
    if n >= total:
        return None
    if mode == "first":
        return list(range(n))
    g = torch.Generator().manual_seed(int(seed))
    labels = class_labels(dataset)
    if labels is None:
        return sorted(torch.randperm(total, generator=g)[:n].tolist())
    return _stratified(labels, n, g)


def class_labels(dataset: Any) -> torch.Tensor | None:
    """The dataset's targets as an ``(N,)`` int64 tensor when they are class labels held in
    memory (of the examples a :class:`Limited` keeps); ``None`` otherwise (nothing is read from
    a lazy column)."""
    split = getattr(dataset, "split", None)
    targets = getattr(split, "targets", None)
    if isinstance(targets, (np.ndarray, list, tuple)):
        try:
            targets = torch.as_tensor(np.asarray(targets))
        except (TypeError, ValueError, RuntimeError):  # strings, ragged lists: not labels
            return None
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or len(targets) != len(split):
        return None
    if targets.is_floating_point() or targets.is_complex():
        return None  # regression targets
    if isinstance(dataset, Limited):
        targets = targets[torch.as_tensor(dataset.indices, dtype=torch.int64)]
    return targets.to(torch.int64)


def class_counts(dataset: Any, num_classes: int) -> torch.Tensor | None:
    """Examples per class (``(num_classes,)`` int64) of a dataset of class labels; ``None``
    when its targets are not labels held in memory or name a class beyond ``num_classes``."""
    labels = class_labels(dataset)
    if labels is None or not num_classes or len(labels) == 0:
        return None
    if labels.min() < 0 or labels.max() >= num_classes:
        return None
    return torch.bincount(labels, minlength=num_classes)


def carve_validation(dataset: Any, spec: ValidationSpec) -> tuple[list[int], list[int]]:
    """``(train, val)``: the examples of a training dataset that train and the ``spec.fraction``
    of them that validate, each in ascending order.

    The draw is seeded by ``spec.seed`` alone. With groups (``split.groups``: a speaker, a
    subject) whole groups are drawn until they hold the fraction, so no group is in both;
    otherwise, with class labels and ``stratify``, each class gives its share (as
    :func:`limit_indices` draws); else a plain draw."""
    total = len(dataset)
    where = f"data.validation (fraction {spec.fraction} of {total} training examples)"
    assert spec.fraction is not None
    wanted = round(spec.fraction * total)
    if wanted < 1 or wanted >= total:
        raise DataError(
            f"{where} leaves {'no validation' if wanted < 1 else 'no training'} example",
            hint="choose a fraction that leaves examples on both sides",
        )
    g = torch.Generator().manual_seed(int(spec.seed))
    groups = getattr(getattr(dataset, "split", None), "groups", None)
    labels = class_labels(dataset) if spec.stratify else None
    if groups is not None:
        val = _grouped_draw([group_key(k) for k in groups], wanted, g, where)
    elif labels is not None:
        val = _stratified(labels, wanted, g)
    else:
        val = sorted(torch.randperm(total, generator=g)[:wanted].tolist())
    chosen = set(val)
    return [i for i in range(total) if i not in chosen], val


def _grouped_draw(keys: list[Any], wanted: int, g: torch.Generator, where: str) -> list[int]:
    """Examples of whole groups, drawn in a seeded order until they number ``wanted`` or more."""
    members: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    if len(members) < 2:
        raise DataError(
            f"{where}: the data has {len(members)} group, and a group is never split",
            hint="validation needs at least two groups (or data without groups)",
        )
    order = list(members)
    val: list[int] = []
    for pick in torch.randperm(len(order), generator=g).tolist():
        if len(val) >= wanted:
            break
        val.extend(members[order[pick]])
    if len(val) == len(keys):  # the last group drawn held the rest
        raise DataError(
            f"{where}: whole groups cannot leave both sides examples "
            f"({len(members)} groups of {len(keys)} examples)",
            hint="choose a smaller fraction",
        )
    return sorted(val)


def _stratified(labels: torch.Tensor, n: int, g: torch.Generator) -> list[int]:
    """``n`` indices drawn per class in proportion to the class sizes (see
    :func:`limit_indices`), sorted."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    quota = counts.double() * n / len(labels)
    take = quota.floor().long()
    # the largest remainders get the rest (ties: the larger class, then the smaller label)
    by_remainder = sorted(
        range(len(counts)), key=lambda c: (-float(quota[c] - take[c]), -int(counts[c]), c)
    )
    for c in by_remainder[: n - int(take.sum())]:
        take[c] += 1
    if n >= len(counts):  # every class present: a missing one takes from the most over-served
        for c in (take == 0).nonzero().flatten().tolist():
            surplus = torch.where(take > 1, take - quota, torch.full_like(quota, -math.inf))
            take[int(surplus.argmax())] -= 1
            take[c] += 1
    # a random order, then grouped by class (stable): each class's first `take` are kept
    shuffled = torch.randperm(len(labels), generator=g)
    grouped = shuffled[torch.sort(inverse[shuffled], stable=True).indices]
    starts = torch.cumsum(counts, 0) - counts
    cls = inverse[grouped]
    rank = torch.arange(len(labels)) - starts[cls]
    return sorted(grouped[rank < take[cls]].tolist())


def build_dataset(recipe: Recipe, split: str, train: bool) -> Any:
    """The examples of ``split``: augmented (with the recipe's slots) when ``train``.

    A carved ``data.validation`` is drawn from the training split (:func:`carve_validation`):
    its split name reads those examples, the training split the rest. ``data.limit_train``
    then keeps the training examples :func:`limit_indices` picks (``data.limit_mode``, the
    recipe's seed); ``data.limit_eval`` the first N of any split evaluated."""
    spec = recipe.data
    carve = spec.validation if spec.validation and spec.validation.carved else None
    carved = carve is not None and split in (carve.split, spec.train_split)
    data = load_source(spec.source, spec.train_split if carved else split, **spec.params)
    dataset: Any = make_dataset(
        data.with_views(spec.views) if spec.views else data,
        augmentation=build_augmentation(spec.augment) if train else None,
        seed=recipe.seed,
        slots=spec.augment_slots if train else None,
        # a peer reads the view of its name when data.views gives one, else the student's
        views=(*DEFAULT_VIEWS, *(p for p in recipe.peers if p in spec.views)),
    )
    if carved:
        assert carve is not None
        rest, val = carve_validation(dataset, carve)
        dataset = Limited(dataset, val if split == carve.split else rest)
    if not train:
        if not spec.limit_eval:
            return dataset
        return _kept(dataset, range(min(spec.limit_eval, len(dataset))))
    if not spec.limit_train:
        return dataset
    indices = limit_indices(dataset, spec.limit_train, spec.limit_mode, recipe.seed)
    return dataset if indices is None else _kept(dataset, indices)


def _kept(dataset: Any, positions: Sequence[int]) -> Limited:
    """The examples at ``positions`` of ``dataset``, as one :class:`Limited` of the underlying
    data (a carved split limited again stays one level deep: its indices are the data's)."""
    if isinstance(dataset, Limited):
        return Limited(dataset.dataset, [dataset.indices[i] for i in positions])
    return Limited(dataset, positions)


def selection_split(recipe: Recipe) -> str:
    """The split each evaluation while training reads: the validation split when the recipe
    has one, else the evaluation split."""
    data = recipe.data
    return data.validation.split if data.validation else data.eval_split


def _loader(
    recipe: Recipe,
    split: str,
    train: bool,
    device: torch.device,
    dataset: Any = None,
    rank: int = 0,
    world: int = 1,
) -> Any:
    spec = recipe.data
    if dataset is None:
        dataset = build_dataset(recipe, split, train)
    batch_size = spec.batch_size if train else spec.eval_batch_size
    if batch_size % world:
        raise ConfigError(
            f"data.batch_size {batch_size} does not split evenly over {world} processes",
            hint=f"use a multiple of {world}: it is the global batch, each process takes "
            f"batch_size / {world}",
        )
    return example_loader(
        dataset,
        batch_size // world,
        train and spec.order == "shuffled",
        recipe.seed,
        spec.num_workers,
        pin_memory=device.type == "cuda",
        rank=rank,
        world=world,
    )


def build_eval_loader(
    recipe: Recipe,
    device: torch.device,
    teacher: Teacher | None = None,
    split: str | None = None,
) -> Any:
    """The evaluation split (or ``split``, e.g. the validation split), unaugmented, in order;
    with a ``store.eval_path`` the evaluation split's examples carry the teacher's cached
    Knowledge (checked against ``teacher`` when it is given, else against the data alone: a
    finished run is evaluated with the outputs it was cached with)."""
    split = split or recipe.data.eval_split
    dataset = build_dataset(recipe, split, False)
    cached = recipe.store is not None and recipe.store.eval_path is not None
    if cached and split == recipe.data.eval_split:
        store = KnowledgeStore(recipe.store.eval_path, verify=recipe.store.verify)
        store.check(store_fingerprint(recipe, teacher, dataset, False), only=teacher is None)
        dataset = StoreDataset(dataset, store)
    return _loader(recipe, split, False, device, dataset)


def build_loaders(
    recipe: Recipe,
    device: torch.device,
    teacher: Teacher | None = None,
    rank: int = 0,
    world: int = 1,
) -> tuple[Any, Any]:
    """Training (augmented, shuffled per epoch) and evaluation loaders of a recipe: the
    evaluation loader reads the split training evaluates (:func:`selection_split`).

    With a ``store:`` the training examples carry the teacher's Knowledge from the store,
    which must have been written for this teacher (``teacher``) and data. Under DDP the
    training loader gives rank ``rank`` of ``world`` its share of every global batch.
    """
    dataset = build_dataset(recipe, recipe.data.train_split, True)
    if recipe.store is not None:
        store = KnowledgeStore(recipe.store.path, verify=recipe.store.verify)
        # without a teacher (its outputs cached elsewhere) only the data can be checked
        store.check(store_fingerprint(recipe, teacher, dataset), only=teacher is None)
        dataset = StoreDataset(dataset, store)
    train = _loader(recipe, recipe.data.train_split, True, device, dataset, rank, world)
    return train, build_eval_loader(recipe, device, teacher, selection_split(recipe))


def build_test_loader(recipe: Recipe, device: torch.device, teacher: Teacher | None = None) -> Any:
    """The evaluation split read once after training, when training evaluates a validation
    split (another one) and ``eval.test`` is on; ``None`` otherwise."""
    data = recipe.data
    if data.validation is None or not recipe.eval.test or data.validation.split == data.eval_split:
        return None
    return build_eval_loader(recipe, device, teacher)


def store_fingerprint(
    recipe: Recipe, teacher: Teacher | None, dataset: Any, train: bool = True
) -> dict[str, str]:
    """What a store's contents depend on, part by part (see ``store.manifest``): of the
    training split, or (``train`` False) of the evaluation split, which is never augmented.
    Without ``teacher`` the parts that need it are left out."""
    data = recipe.data
    split, limit = (data.train_split, data.limit_train) if train else (data.eval_split, None)
    parts = [
        data.source,
        data.params,
        split,
        limit,
        dataset.split.side("teacher"),
        dataset.split.fingerprint(),
        len(dataset),
    ]
    if limit and data.limit_mode != "first":
        # which examples were drawn (the seed picks them); left out for `first`, so that a
        # store written before limit_mode existed (the first N) still matches `first`
        parts.append({"limit_mode": data.limit_mode, "examples": _examples_digest(dataset)})
    if train and data.validation is not None and data.validation.carved:
        # the examples the carve left to train (added only then: older stores keep matching)
        carve = data.validation.model_dump(mode="json")
        parts.append({"validation": carve, "examples": _examples_digest(dataset)})
    found = {"data": digest(*parts), **_recipe_fingerprint(recipe, train)}
    if teacher is not None and recipe.teacher is not None:
        found["teacher_weights"] = weights_digest(teacher)
    return found


def _examples_digest(dataset: Any) -> str | None:
    """A SHA-256 of the indices a :class:`Limited` dataset keeps (``None``: it keeps all)."""
    if not isinstance(dataset, Limited):
        return None
    return hashlib.sha256(np.asarray(dataset.indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def _recipe_fingerprint(recipe: Recipe, train: bool) -> dict[str, str]:
    """The parts of a store's fingerprint that the recipe alone decides: no data is read and
    no model is built for them."""
    data = recipe.data
    augmented = train and data.augment is not None
    found = {
        # without augmentation every slot of every example is the same view, whatever the seed:
        # one store then serves all seeds of a recipe
        "augmentation": digest(
            data.augment if train else None,
            data.augment_slots if train else None,
            recipe.seed if augmented else None,
        ),
    }
    if recipe.teacher is not None:
        found["teacher"] = digest(recipe.teacher.model_dump(mode="json", exclude={"weights"}))
    return found


def store_paths(recipe: Recipe) -> list[tuple[Path, str, bool]]:
    """``(path, split, train)`` of each store a recipe names: training, then evaluation."""
    assert recipe.store is not None
    found = [(recipe.store.path, recipe.data.train_split, True)]
    if recipe.store.eval_path is not None:
        found.append((recipe.store.eval_path, recipe.data.eval_split, False))
    return found


def check_stores_early(recipe: Recipe) -> None:
    """Before anything is built: the stores a recipe trains from are there, complete, and were
    written for this recipe's teacher and augmentation (the data and the teacher's weights are
    checked once they are loaded, by :func:`build_loaders`). Opening a store reads its manifest
    and shard records only."""
    if recipe.store is None:
        return
    for path, _, train in store_paths(recipe):
        store = KnowledgeStore(path, verify=False)
        store.check(_recipe_fingerprint(recipe, train), only=True)


def check_store_plans(stores: list[tuple[Path, dict[str, str]]]) -> None:
    """Before a teacher pass: each ``(path, fingerprint)`` store that ``cache`` would write
    or finish is new, or was planned for this very fingerprint (a store for another recipe is
    refused here, not after the stores before it have been written)."""
    for path, fingerprint in stores:
        for name, what in ((MANIFEST, "manifest"), (PLAN, "store plan")):
            if (path / name).is_file():
                read_manifest(path / name, what).check_fingerprint(fingerprint, path)
                break


def store_codecs(recipe: Recipe, distiller: Distiller) -> dict[str, KeyCodec]:
    """How each teacher key the losses read is stored (the recipe's ``store.keys`` or dense)."""
    assert recipe.store is not None
    spec = recipe.store
    needed = sorted({key for needs in distiller.needs.values() for key in needs.teacher})
    unused = sorted(set(spec.keys) - set(needed))
    if unused:
        raise ConfigError(
            f"store.keys names {unused}, which no loss reads from the teacher",
            hint=f"the losses read {needed or 'nothing'} from the teacher",
        )
    if not needed:
        raise ConfigError("no loss reads the teacher: there is nothing to store")
    return {key: KeyCodec.of(spec.keys.get(key), spec.dtype) for key in needed}


# ------------------------------------------------------------------ preflight


def preflight(
    distiller: Distiller,
    train_loader: Any,
    eval_loader: Any,
    device: torch.device,
    *,
    train_name: str = "the training data",
    eval_name: str = "the evaluation data",
    topk: int = 5,
    world: int = 1,
    test_loader: Any = None,
    test_name: str = "the test data",
) -> None:
    """What can be found wrong on real data, before a run folder exists or a step is trained:
    an empty data set (or one that gives no batch), loss weights that are not finite or all
    zero, NaN/Inf parameters, a model that cannot run on its inputs (images smaller than its
    convolutions and pooling accept, say), a loss that needs what a model does not emit
    (:meth:`Distiller.check`, which also builds the adapters), and a student the evaluation
    (of ``eval_loader``, and of ``test_loader`` read after training) cannot score.
    ``train_name``/``eval_name``/``test_name`` say in messages where the data came from."""
    _check_loss_weights(distiller)
    _check_size(train_loader, train_name, world)
    named = ((eval_loader, eval_name), (test_loader, test_name))
    evaluated = [(loader, name) for loader, name in named if loader is not None]
    for loader, name in evaluated:
        _check_size(loader, name)
    sides = {**distiller.models(), "teacher": distiller.teacher}
    models = {side: wrapper for side, wrapper in sides.items() if wrapper is not None}
    for side, wrapper in models.items():
        _check_parameters(wrapper, side)
    give_class_counts(distiller, train_loader.dataset, train_name)
    batch = to_device(loader_preview(train_loader), device)
    what = f"first batch of {train_name}"
    try:
        distiller.to(device).check(batch, getattr(train_loader.dataset, "num_classes", None))
    except CrossDistillError:
        raise
    except Exception as exc:  # a model or a loss failing on real data: say which, and on what
        raise _failure(
            models, batch, exc, what, f"the losses cannot be computed on the {what}"
        ) from None
    # a student the evaluation cannot score fails now, not after the last epoch
    for loader, name in evaluated:
        preview = to_device(loader_preview(loader), device)
        what = f"first batch of {name}"
        try:
            check_evaluable(
                distiller.student, preview, loader.dataset, distiller.teacher, device, topk
            )
        except CrossDistillError:
            raise
        except Exception as exc:
            raise _failure(models, preview, exc, what, f"the {what} cannot be evaluated") from None


def give_class_counts(distiller: Distiller, dataset: Any, where: str) -> None:
    """Hand the examples per class of the training data to the losses that weight classes by
    frequency (``class_weights: balanced`` / ``effective``); nothing when none does."""
    if not distiller.needs_class_counts:
        return
    examples = getattr(dataset, "base", dataset)  # a store-fed dataset: its examples
    counts = class_counts(examples, getattr(examples, "num_classes", None) or 0)
    if counts is None:
        raise DataError(
            f"class_weights balanced/effective count the classes of {where}, whose targets "
            "are not class labels held in memory (with class names)",
            hint="give the weights yourself: class_weights: [w_0, w_1, ...], one per class",
        )
    distiller.set_class_counts(counts)


def _check_loss_weights(distiller: Distiller) -> None:
    weights = distiller.weights
    bad = {name: w for name, w in weights.items() if not math.isfinite(w)}
    if bad:
        raise ConfigError(
            f"loss weights must be finite numbers, got {bad}",
            hint="give every loss a finite weight (a loss's `weight:`); an infinite weight "
            "makes the total loss NaN or Inf at the first step",
        )
    if not any(_largest_weight(distiller, name) for name in weights):
        raise ConfigError(
            f"every loss has weight 0 ({sorted(weights)}): training would not change the student",
            hint="give at least one loss a non-zero weight",
        )


def _largest_weight(distiller: Distiller, name: str) -> float:
    """A term's weight, or the largest a weight schedule gives it (it may warm up from 0)."""
    schedule = distiller.schedules.get(name, {}).get("weight")
    weight = distiller.weights[name]
    return weight if schedule is None else max(weight, schedule.start, schedule.end)


def _check_size(loader: Any, name: str, world: int = 1) -> None:
    """``loader`` must give at least one batch (per process, under DDP)."""
    try:
        n = len(loader.dataset)
    except TypeError:  # an iterable dataset: its size is not known until it is read
        n = None
    if n == 0:
        raise DataError(
            f"{name} has no examples (0)",
            hint="check the data source, its parameters and the split it reads",
        )
    if n is not None and n < world:
        raise DataError(
            f"{name} has {n} examples, fewer than the {world} processes that share it",
            hint=f"give it at least {world} examples, or run on fewer processes",
        )
    try:
        batches = len(loader)
    except TypeError:
        return
    if batches == 0:
        inner = getattr(loader, "loader", loader)  # your own DataLoader, inside ExampleBatches
        size = getattr(inner, "batch_size", None)
        raise DataError(
            f"{name} gives no batch: {n} examples, batch size {size}"
            + (", drop_last=True" if getattr(inner, "drop_last", False) else ""),
            hint=f"use a batch size of at most {n}, or drop_last=False",
        )


def _check_parameters(wrapper: nn.Module, side: str) -> None:
    """NaN/Inf in a model's parameters makes every loss NaN; name the tensors, not the lr."""
    bad = [
        name.removeprefix("model.")
        for name, p in wrapper.named_parameters()
        if not nn.parameter.is_lazy(p)
        and p.is_floating_point()
        and not bool(torch.isfinite(p).all())
    ]
    if bad:
        raise ConfigError(
            f"the {side}'s parameters {bad[:3]} hold NaN or Inf ({len(bad)} tensors in all)",
            hint=f"the {side}'s weights are damaged: load a good copy (its `weights:`), or "
            "retrain it",
        )


def _failure(
    models: Mapping[str, ModelWrapper],
    batch: Mapping[str, Any],
    exc: Exception,
    what: str,
    otherwise: str,
) -> CrossDistillError:
    """The error for ``exc``, raised while checking ``batch``: the side whose model fails on
    its own input when run alone (named with that input's shape), else ``otherwise``."""
    views = batch.get("views", {})
    for side, wrapper in models.items():
        if side == "teacher" and "knowledge" in batch:
            continue  # from a store: the teacher does not run
        view = getattr(wrapper, "view", side)  # a momentum teacher reads the student's view
        if view not in views:
            return ConfigError(
                f"the {what} has no {view!r} view (it has {sorted(views)})",
                hint="give every example the inputs of both sides (`teacher`, `student`)",
            )
        was_training = wrapper.training
        wrapper.eval()
        try:
            with torch.no_grad():
                wrapper(views[view])
        except CrossDistillError as own:
            return own
        except Exception as own:
            return ConfigError(
                f"the {side} ({_model_name(wrapper)}) cannot run on the {what}: its input is "
                f"{_describe(views[view])}, and it raised {type(own).__name__}: {_short(own)}",
                hint=f"check that the data fits the {side}: inputs smaller than the model "
                "accepts (images of a pixel or two into convolutions and pooling that need "
                f"more), other channels, or another type; the {side}'s input comes from the "
                f"data (and its views) through the {side}'s pipeline",
            )
        finally:
            wrapper.train(was_training)
    return ConfigError(
        f"{otherwise}: {type(exc).__name__}: {_short(exc)}",
        hint="both models ran on it; check the losses' parameters and what each reads",
    )


def _model_name(wrapper: nn.Module) -> str:
    model = getattr(wrapper, "model", None)
    if model is None:
        return f"an ensemble of {len(getattr(wrapper, 'members', []))} teachers"
    spec = getattr(model, "plugin_spec", None)
    name = spec.get("name") if isinstance(spec, dict) else None
    kind = type(model).__name__
    return f"model {name!r}, a {kind}" if isinstance(name, str) and name != kind else kind


def _describe(x: Any) -> str:
    """An input as an error message shows it: its shape and dtype, not its values."""
    if isinstance(x, torch.Tensor):
        return f"a {str(x.dtype).removeprefix('torch.')} tensor of shape {tuple(x.shape)}"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (list, tuple)):
        kind = type(x[0]).__name__ if x else "items"
        return f"a {type(x).__name__} of {len(x)} {kind}"
    return f"a {type(x).__name__}"


def _short(exc: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or "(no message)"
    return text if len(text) <= limit else text[: limit - 1] + "…"
