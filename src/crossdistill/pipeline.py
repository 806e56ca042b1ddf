"""From a recipe to a finished Run (``run_recipe``), a written knowledge store
(``cache_recipe``), or whichever of the two is missing (``run_or_reuse``): the code that
``crossdistill run`` / ``cache`` and the benchmarks end in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from crossdistill._util.deferred import deferred
from crossdistill._util.device import select_device
from crossdistill.build import (
    build_dataset,
    build_distiller,
    build_loaders,
    build_test_loader,
    check_store_plans,
    check_stores_early,
    preflight,
    selection_split,
    store_codecs,
    store_fingerprint,
    store_paths,
)
from crossdistill.config import Recipe
from crossdistill.errors import ConfigError
from crossdistill.evaluate import evaluate_student
from crossdistill.models.runtime._convert import runtime_teacher
from crossdistill.registry import import_modules
from crossdistill.runs import Run, final_metrics
from crossdistill.store import write_store
from crossdistill.store.manifest import RuntimeRecord
from crossdistill.train.callbacks import check_callbacks
from crossdistill.train.runtime import barrier, distributed_rank, seed_everything
from crossdistill.train.trainer import History, Trainer


@dataclass
class RunResult:
    """What a finished run returns: the run, its history, the trained student model, and its
    final metrics (eval.json: see :func:`final_metrics`)."""

    run: Run
    history: History
    student: nn.Module
    metrics: dict[str, Any]

    @property
    def run_dir(self) -> Path:
        return self.run.path


RUNTIMES = ("torch", "onnx")


def cache_recipe(recipe: Recipe, progress: bool = True, runtime: str = "torch") -> Path:
    """Write (or finish) the knowledge store a recipe names; returns its path.

    ``runtime="onnx"``: the teacher is exported once to ONNX (cached by its weights), checked
    against itself on real examples of each store's data, and run by onnxruntime for the store
    pass; the manifest records the runtime and the measured parity, which lets the recipe's
    PyTorch teacher read the store. Under torchrun (``WORLD_SIZE`` > 1) each rank writes its
    share of the shards and rank 0 writes the manifest once all are done.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(
            f"unknown teacher runtime {runtime!r}", hint=f"one of {', '.join(RUNTIMES)}"
        )
    if recipe.store is None:
        raise ConfigError(
            "the recipe has no `store:` section",
            hint="add `store: {path: stores/NAME}` to say where the teacher's outputs go",
        )
    import_modules(recipe.imports)
    seed_everything(recipe.seed, recipe.train.deterministic)
    if recipe.teacher is None:
        raise ConfigError(
            "the recipe has no `teacher:`: there is nothing to cache",
            hint="name the teacher whose outputs the store keeps; a recipe with a store and no "
            "teacher trains from a store written elsewhere (`crossdistill run`, not `cache`)",
        )
    # the student's expensive initialisation (a token table built with a teacher) is never
    # run: caching needs only the teacher and what the losses read from it
    with deferred():
        distiller = build_distiller(recipe)
    assert distiller.teacher is not None
    device = select_device(recipe.train.device)
    teacher = distiller.teacher.to(device)
    rank, world = distributed_rank()
    codecs = store_codecs(recipe, distiller)
    # every store's data is read and its plan checked before the first teacher pass
    stores = []
    for path, split, train in store_paths(recipe):
        dataset = build_dataset(recipe, split, train)
        stores.append((path, dataset, store_fingerprint(recipe, teacher, dataset, train)))
    check_store_plans([(path, fingerprint) for path, _, fingerprint in stores])
    for path, dataset, fingerprint in stores:
        writer, record = teacher, None
        if runtime != "torch":
            writer, found = runtime_teacher(teacher, dataset, sorted(codecs))
            record = RuntimeRecord(**found)
        write_store(
            path,
            writer,
            dataset,
            codecs,
            fingerprint,
            shard_size=recipe.store.shard_size,
            batch_size=recipe.store.batch_size,
            rank=rank,
            world_size=world,
            progress=progress and recipe.train.progress and rank == 0,
            runtime=record,
        )
    return recipe.store.path


def run_recipe(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Build everything a recipe names, train, evaluate, and finish its Run.

    ``overwrite``: an existing run folder of the same name is emptied and written anew, once
    every check before training has passed (never together with ``resume``).

    A recipe with ``generations: N`` (born-again) or a ``continual:`` section trains several
    models, each a Run inside the run folder: see :func:`crossdistill.generations.
    run_generations` and :func:`crossdistill.continual.run_continual`."""
    if recipe.generations > 1:
        from crossdistill.generations import run_generations  # it calls run_recipe per generation

        return run_generations(recipe, resume=resume, overwrite=overwrite)
    if recipe.continual is not None:
        from crossdistill.continual import run_continual  # it calls run_recipe per task

        return run_continual(recipe, resume=resume, overwrite=overwrite)
    # Under torchrun every rank runs this; the process group is set up first (gloo or nccl).
    rank, world = distributed_rank()
    import_modules(recipe.imports)
    check_callbacks(recipe.train)  # loggers' packages, callbacks' import paths and params
    seed_everything(recipe.seed, recipe.train.deterministic)
    # Everything that can be wrong is found before the run directory is touched, and before
    # any expensive work: the stores (present, for this teacher), models, weights, losses,
    # device, data files, and what each loss needs from a real batch. Only then does a
    # student's costly initialisation run (a token table built with a teacher: `expensive`).
    check_stores_early(recipe)
    with deferred() as expensive:
        distiller = build_distiller(recipe)
    device = select_device(recipe.train.device)
    train_loader, eval_loader = build_loaders(recipe, device, distiller.teacher, rank, world)
    test_loader = build_test_loader(recipe, device, distiller.teacher)
    data = recipe.data
    splits = (selection_split(recipe), data.eval_split)
    preflight(
        distiller,
        train_loader,
        eval_loader,
        device,
        train_name=f"the training data (split {data.train_split!r} of {data.source!r})",
        eval_name=f"the evaluation data (split {splits[0]!r} of {data.source!r})",
        topk=recipe.eval.topk,
        world=world,
        test_loader=test_loader,
        test_name=f"the test data (split {splits[1]!r} of {data.source!r})",
    )
    for step in expensive:
        step()
    run = Run(recipe.run_dir)
    trainer = Trainer(
        distiller,
        recipe.train,
        run=run,
        eval_spec=recipe.eval,
        fingerprint=recipe.fingerprint(),
        evaluator=evaluate_student,
        splits=splits,
    )
    if rank != 0:  # rank 0 alone owns the run directory
        barrier()  # the other ranks read checkpoints from it when resuming
        history = trainer.fit(train_loader, eval_loader, resume=resume, test_loader=test_loader)
        barrier()  # every rank returns a finished run
        return RunResult(run, history, distiller.student.model, final_metrics(history, splits))
    with run.writing(recipe, resume, overwrite):
        barrier()
        history = trainer.fit(train_loader, eval_loader, resume=resume, test_loader=test_loader)
        metrics = final_metrics(history, splits)
        run.finish(distiller, recipe.student, metrics, epochs=trainer.epoch)
        run.finish_peers(distiller, recipe, metrics, epochs=trainer.epoch)
    barrier()
    return RunResult(run, history, distiller.student.model, metrics)


def run_or_reuse(recipe: Recipe) -> Path:
    """The run directory of ``recipe``, training only what is missing.

    A finished run of the same resolved recipe is reused; a started one is resumed; a run
    directory made by a different recipe is refused rather than overwritten.
    """
    if recipe.generations > 1 or recipe.continual is not None:
        # several runs in one folder: resuming reuses the finished ones and trains the rest
        run_recipe(recipe, resume=True)
        return recipe.run_dir
    run = Run(recipe.run_dir)
    if run.exists:
        if run.recipe().fingerprint() != recipe.fingerprint():
            raise ConfigError(
                f"{run.path} holds a run of a different recipe",
                hint="delete it, or give this run another name with --set name=...",
            )
        if run.finished:
            return run.path
        return run_recipe(recipe, resume=True).run_dir
    return run_recipe(recipe).run_dir
