"""From a recipe to the objects it names: the Distiller (teacher, student, losses), datasets and
loaders, and the knowledge store's fingerprint and codecs.

Everything here builds; nothing trains or writes. ``pipeline`` (recipe → finished run) and
``runs`` (reopening a run's student, teacher and data) both build through these functions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Subset

from crossdistill._util.hashing import digest, weights_digest
from crossdistill.config import LossSpec, ModelSpec, PluginSpec, Recipe, TeacherSpec
from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.taps import Tap
from crossdistill.core.wrappers import EnsembleTeacher, ModelWrapper, Student, Teacher
from crossdistill.data import build_augmentation, example_loader, load_source
from crossdistill.data.dataset import make_dataset
from crossdistill.data.steps import build_pipeline
from crossdistill.errors import ConfigError
from crossdistill.losses import build_loss
from crossdistill.models.registry import build_model, load_weights
from crossdistill.store import KeyCodec, KnowledgeStore, StoreDataset


def build_wrapper(cls: type[ModelWrapper], spec: ModelSpec, where: str) -> ModelWrapper:
    """A Student/Teacher from a model spec: model, weights, pipeline, taps."""
    model = build_model(spec.model, spec.params, where)
    if spec.weights is not None:
        load_weights(model, spec.weights, where=f"{where}.weights")
    taps = [Tap(**t.model_dump()) for t in spec.taps]
    pipeline = build_pipeline(spec.pipeline, f"{where}.pipeline")
    return cls(model, outputs=spec.outputs, taps=taps, pipeline=pipeline)


def build_teacher(spec: TeacherSpec) -> Teacher:
    if spec.members:
        members = [
            build_wrapper(Teacher, m, f"teacher.members[{i}]") for i, m in enumerate(spec.members)
        ]
        return EnsembleTeacher(members, spec.member_weights)  # type: ignore[arg-type]
    return build_wrapper(Teacher, spec.as_model_spec(), "teacher")  # type: ignore[return-value]


def build_term(spec: LossSpec, where: str) -> Term:
    """A Distiller term from a recipe's loss entry (the adapter is built later, from shapes)."""
    adapter = spec.adapter.model_dump() if isinstance(spec.adapter, PluginSpec) else spec.adapter
    return Term(spec.term, build_loss(spec.name, spec.params, where=where), spec.weight, adapter)


def build_distiller(recipe: Recipe) -> Distiller:
    terms = [build_term(spec, f"losses[{i}]") for i, spec in enumerate(recipe.losses)]
    student = build_wrapper(Student, recipe.student, "student")
    teacher = build_teacher(recipe.teacher) if recipe.teacher else None
    # a store without a teacher: the teacher's outputs come from the store alone
    given = recipe.store is not None and teacher is None
    return Distiller(student, terms, teacher=teacher, knowledge_given=given)  # type: ignore[arg-type]


class Head(Subset):
    """The first ``n`` examples of a dataset; everything else (``set_epoch``, ``slot``,
    ``example``, ...) is the dataset's."""

    def __init__(self, dataset: Any, n: int) -> None:
        super().__init__(dataset, range(min(n, len(dataset))))

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def build_dataset(recipe: Recipe, split: str, train: bool) -> Any:
    """The examples of ``split``: augmented (with the recipe's slots) when ``train``."""
    spec = recipe.data
    data = load_source(spec.source, split, **spec.params)
    dataset: Any = make_dataset(
        data.with_views(spec.views) if spec.views else data,
        augmentation=build_augmentation(spec.augment) if train else None,
        seed=recipe.seed,
        slots=spec.augment_slots if train else None,
    )
    limit = spec.limit_train if train else spec.limit_eval
    return Head(dataset, limit) if limit else dataset


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
        train,  # shuffle
        recipe.seed,
        spec.num_workers,
        pin_memory=device.type == "cuda",
        rank=rank,
        world=world,
    )


def build_eval_loader(recipe: Recipe, device: torch.device, teacher: Teacher | None = None) -> Any:
    """The evaluation split, unaugmented, in order; with a ``store.eval_path`` its examples
    carry the teacher's cached Knowledge (checked against ``teacher`` when it is given, else
    against the data alone: a finished run is evaluated with the outputs it was cached with)."""
    dataset = build_dataset(recipe, recipe.data.eval_split, False)
    if recipe.store is not None and recipe.store.eval_path is not None:
        store = KnowledgeStore(recipe.store.eval_path, verify=recipe.store.verify)
        store.check(store_fingerprint(recipe, teacher, dataset, False), only=teacher is None)
        dataset = StoreDataset(dataset, store)
    return _loader(recipe, recipe.data.eval_split, False, device, dataset)


def build_loaders(
    recipe: Recipe,
    device: torch.device,
    teacher: Teacher | None = None,
    rank: int = 0,
    world: int = 1,
) -> tuple[Any, Any]:
    """Training (augmented, shuffled per epoch) and evaluation loaders of a recipe.

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
    return train, build_eval_loader(recipe, device, teacher)


def store_fingerprint(
    recipe: Recipe, teacher: Teacher | None, dataset: Any, train: bool = True
) -> dict[str, str]:
    """What a store's contents depend on, part by part (see ``store.manifest``): of the
    training split, or (``train`` False) of the evaluation split, which is never augmented.
    Without ``teacher`` the parts that need it are left out."""
    data = recipe.data
    split, limit = (data.train_split, data.limit_train) if train else (data.eval_split, None)
    augmented = train and data.augment is not None
    found = {
        "data": digest(
            data.source,
            data.params,
            split,
            limit,
            dataset.split.side("teacher"),
            dataset.split.fingerprint(),
            len(dataset),
        ),
        # without augmentation every slot of every example is the same view, whatever the seed:
        # one store then serves all seeds of a recipe
        "augmentation": digest(
            data.augment if train else None,
            data.augment_slots if train else None,
            recipe.seed if augmented else None,
        ),
    }
    if teacher is not None and recipe.teacher is not None:
        found["teacher_weights"] = weights_digest(teacher)
        found["teacher"] = digest(recipe.teacher.model_dump(mode="json", exclude={"weights"}))
    return found


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
    codecs = {}
    for key in needed:
        key_spec = spec.keys.get(key)
        codecs[key] = KeyCodec(
            format=key_spec.format if key_spec else "dense",
            k=key_spec.k if key_spec else None,
            dtype=(key_spec.dtype if key_spec and key_spec.dtype else spec.dtype),
        )
    return codecs
