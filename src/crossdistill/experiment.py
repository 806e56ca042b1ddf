"""From a recipe to a finished run directory — the code that both the CLI and ``distill()`` end in.

A run directory ``<output.dir>/<name>/`` holds ``config.yaml`` (the resolved recipe),
``metrics.jsonl``, ``checkpoints/``, and once training ends ``student.safetensors`` (the student
alone, loadable without crossdistill), ``student.json`` (how to rebuild it and its preprocessing)
and ``eval.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Subset

from crossdistill.config import (
    LossSpec,
    ModelSpec,
    PluginSpec,
    Recipe,
    TeacherSpec,
    dump_recipe,
    load_recipe,
)
from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.taps import Tap
from crossdistill.core.wrappers import EnsembleTeacher, ModelWrapper, Student, Teacher
from crossdistill.data import build_augmentation, example_loader, load_source
from crossdistill.data.dataset import make_dataset, preview_batch
from crossdistill.data.steps import build_pipeline
from crossdistill.errors import CheckpointError, ConfigError
from crossdistill.losses import build_loss
from crossdistill.models.registry import MODELS, build_model, load_weights
from crossdistill.registry import import_modules
from crossdistill.store import KeyCodec, KnowledgeStore, StoreDataset, write_store
from crossdistill.store.manifest import digest, weights_digest
from crossdistill.train.checkpoint import list_checkpoints, sha256
from crossdistill.train.runtime import (
    barrier,
    distributed_rank,
    seed_everything,
    select_device,
    to_device,
)
from crossdistill.train.trainer import History, Trainer


def build_wrapper(cls: type[ModelWrapper], spec: ModelSpec, where: str) -> ModelWrapper:
    """A Student/Teacher from a model spec: model, weights, pipeline, taps."""
    model = build_model(spec.model, spec.params, where)
    if spec.weights is not None:
        load_weights(model, spec.weights, where=f"{where}.weights")
    taps = [Tap(**t.model_dump()) for t in spec.taps]
    return cls(model, outputs=spec.outputs, taps=taps, pipeline=build_pipeline(spec.pipeline))


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
    return Distiller(student, terms, teacher=teacher)  # type: ignore[arg-type]


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
    dataset: Any = make_dataset(
        load_source(spec.source, split, **spec.params),
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


def build_eval_loader(recipe: Recipe, device: torch.device) -> Any:
    """The evaluation split, unaugmented, in order."""
    return _loader(recipe, recipe.data.eval_split, False, device)


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
        assert teacher is not None  # a recipe with a store has a teacher
        store = KnowledgeStore(recipe.store.path, verify=recipe.store.verify)
        store.check(store_fingerprint(recipe, teacher, dataset))
        dataset = StoreDataset(dataset, store)
    train = _loader(recipe, recipe.data.train_split, True, device, dataset, rank, world)
    return train, build_eval_loader(recipe, device)


def store_fingerprint(recipe: Recipe, teacher: Teacher, dataset: Any) -> dict[str, str]:
    """What a store's contents depend on, part by part (see ``store.manifest``)."""
    assert recipe.teacher is not None
    data = recipe.data
    return {
        "teacher_weights": weights_digest(teacher),
        "teacher": digest(recipe.teacher.model_dump(mode="json", exclude={"weights"})),
        "data": digest(
            data.source,
            data.params,
            data.train_split,
            data.limit_train,
            dataset.split.fingerprint(),
            len(dataset),
        ),
        # without augmentation every slot of every example is the same view, whatever the seed:
        # one store then serves all seeds of a recipe
        "augmentation": digest(
            data.augment, data.augment_slots, recipe.seed if data.augment else None
        ),
    }


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


def cache_recipe(recipe: Recipe, progress: bool = True) -> Path:
    """Write (or finish) the knowledge store a recipe names; returns its path.

    Under torchrun (``WORLD_SIZE`` > 1) each rank writes its share of the shards and rank 0
    writes the manifest once all are done.
    """
    if recipe.store is None:
        raise ConfigError(
            "the recipe has no `store:` section",
            hint="add `store: {path: stores/NAME}` to say where the teacher's outputs go",
        )
    import_modules(recipe.imports)
    seed_everything(recipe.seed, recipe.train.deterministic)
    distiller = build_distiller(recipe)
    assert distiller.teacher is not None
    device = select_device(recipe.train.device)
    teacher = distiller.teacher.to(device)
    dataset = build_dataset(recipe, recipe.data.train_split, True)
    rank, world = distributed_rank()
    write_store(
        recipe.store.path,
        teacher,
        dataset,
        store_codecs(recipe, distiller),
        store_fingerprint(recipe, teacher, dataset),
        shard_size=recipe.store.shard_size,
        batch_size=recipe.store.batch_size,
        rank=rank,
        world_size=world,
        progress=progress and recipe.train.progress and rank == 0,
    )
    return recipe.store.path


@dataclass
class RunResult:
    """What a finished run returns: where it lives, its history, the trained student model."""

    run_dir: Path
    history: History
    student: nn.Module
    metrics: dict[str, float]


def prepare_run_dir(recipe: Recipe, resume: bool) -> Path:
    """Create the run directory, refusing to overwrite a finished or started run."""
    run_dir = recipe.run_dir
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise ConfigError(
            f"run directory {run_dir} already exists",
            hint="pass --resume to continue it, or --name NEW to start another run",
        )
    if resume and (run_dir / "student.safetensors").exists() and not list_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} is a finished run with no checkpoint to resume from")
    previous = run_dir / "config.yaml"
    before = load_recipe(previous).fingerprint() if resume and previous.is_file() else None
    if before is not None and before != recipe.fingerprint():
        # refused before anything is written: its config.yaml must keep describing its weights
        raise CheckpointError(
            f"{run_dir} was started by a different recipe (fingerprint {before} vs "
            f"{recipe.fingerprint()})",
            hint="resume with the recipe and overrides the run started with, or give the "
            "new run another name",
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_recipe(recipe, run_dir / "config.yaml")
    return run_dir


def run_recipe(recipe: Recipe, resume: bool = False) -> RunResult:
    """Build everything a recipe names, train, evaluate and write the run directory."""
    # Under torchrun every rank runs this; the process group is set up first (gloo or nccl).
    rank, world = distributed_rank()
    import_modules(recipe.imports)
    seed_everything(recipe.seed, recipe.train.deterministic)
    # Everything that can be wrong is found before the run directory is touched: models,
    # weights, losses, device, data files, and what each loss needs from a real batch.
    distiller = build_distiller(recipe)
    device = select_device(recipe.train.device)
    train_loader, eval_loader = build_loaders(recipe, device, distiller.teacher, rank, world)
    distiller.to(device).check(
        to_device(preview_batch(train_loader.dataset), device),
        num_classes=getattr(train_loader.dataset, "num_classes", None),
    )
    trainer = Trainer(
        distiller,
        recipe.train,
        run_dir=recipe.run_dir,
        eval_spec=recipe.eval,
        fingerprint=recipe.fingerprint(),
    )
    run_dir = recipe.run_dir
    if rank == 0:
        prepare_run_dir(recipe, resume)
    barrier()  # the other ranks read checkpoints from the run directory when resuming
    history = trainer.fit(train_loader, eval_loader, resume=resume)
    metrics = history.eval[-1] if history.eval else {}
    if rank == 0:
        finish_run(run_dir, distiller, recipe.student, metrics, epochs=trainer.epoch)
    barrier()  # every rank returns a finished run
    return RunResult(run_dir, history, distiller.student.model, metrics)


def finish_run(
    run_dir: Path, distiller: Distiller, spec: ModelSpec, metrics: dict[str, float], epochs: int
) -> None:
    """Write the student alone (safetensors + how to rebuild it) and the final metrics."""
    model = distiller.student.model
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(run_dir / "student.safetensors"))
    (run_dir / "student.json").write_text(
        json.dumps(
            {
                "model": spec.model,
                "params": spec.params,
                "outputs": spec.outputs,
                "pipeline": [step.model_dump() for step in spec.pipeline],
                "parameters": sum(p.numel() for p in model.parameters()),
                # load_student checks it: a flipped byte inside a tensor still parses
                "sha256": sha256(run_dir / "student.safetensors"),
            },
            indent=1,
        )
    )
    (run_dir / "eval.json").write_text(json.dumps({"epoch": epochs, **metrics}, indent=1))


def load_student(run_dir: str | Path) -> Student:
    """The trained student of a run directory, with its input pipeline."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "student.json"
    if not meta_path.is_file():
        raise CheckpointError(
            f"{run_dir} has no student.json: the run has not finished",
            hint="resume it with `crossdistill run RECIPE --resume`",
        )
    meta = json.loads(meta_path.read_text())
    weights = run_dir / "student.safetensors"
    if "sha256" in meta and weights.is_file() and sha256(weights) != meta["sha256"]:
        raise CheckpointError(
            f"{weights} is corrupted: its SHA-256 differs from the one in student.json",
            hint=f"rewrite it from the last checkpoint: delete student.safetensors, then "
            f"`crossdistill run {run_dir / 'config.yaml'} --resume`",
        )
    params = dict(meta["params"])
    if MODELS.accepts(meta["model"], "init_from"):
        # the trained weights replace the initialisation: never run a teacher to compute it
        params["init_from"] = None
    spec = ModelSpec(
        model=meta["model"],
        params=params,
        outputs=meta["outputs"],
        pipeline=meta["pipeline"],
        weights=run_dir / "student.safetensors",
    )
    return build_wrapper(Student, spec, "student")  # type: ignore[return-value]


def run_or_reuse(recipe: Recipe) -> Path:
    """The run directory of ``recipe``, training only what is missing.

    A finished run of the same resolved recipe is reused; a started one is resumed; a run
    directory made by a different recipe is refused rather than overwritten.
    """
    run_dir = recipe.run_dir
    if (run_dir / "config.yaml").is_file():
        previous = load_recipe(run_dir / "config.yaml")
        if previous.fingerprint() != recipe.fingerprint():
            raise ConfigError(
                f"{run_dir} holds a run of a different recipe",
                hint="delete it, or give this run another name with --set name=...",
            )
        if (run_dir / "student.safetensors").is_file():
            return run_dir
        return run_recipe(recipe, resume=True).run_dir
    return run_recipe(recipe).run_dir
