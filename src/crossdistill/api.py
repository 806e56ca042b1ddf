"""The Python entry points: ``crossdistill.distill(teacher, student, train_data, losses)`` and
``crossdistill.cache(teacher, data, path)``.

``distill`` builds the same Distiller and Trainer as ``crossdistill run`` and trains the student
you pass in place; it returns a :class:`DistillResult` (the student, the history, the final
metrics, the run). With ``run_dir`` it leaves a complete :class:`~crossdistill.runs.Run` —
config.yaml, metrics, checkpoints, the student, student.json, eval.json — that
``crossdistill eval``, ``export``, ``bench`` and ``report`` take like any other. With ``store``
the teacher's Knowledge comes from a knowledge store that ``cache`` wrote: no teacher runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
from torch import nn
from torch.utils.data import DataLoader, Dataset

from crossdistill._util.device import select_device, to_device
from crossdistill._util.hashing import digest, weights_digest
from crossdistill._util.validation import format_validation_error
from crossdistill.build import build_term, preflight
from crossdistill.config import (
    EvalSpec,
    LossSpec,
    StoreKeySpec,
    TrainSpec,
)
from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.wrappers import Student, Teacher
from crossdistill.data import DistillDataset, Split, as_distill_dataset, example_loader
from crossdistill.data.dataset import ExampleBatches, preview_batch
from crossdistill.data.saved import save_split
from crossdistill.errors import ConfigError
from crossdistill.evaluate import evaluate_student
from crossdistill.losses import Loss
from crossdistill.models.runtime._convert import runtime_teacher
from crossdistill.record import model_spec, recipe_of
from crossdistill.registry import plugin_name
from crossdistill.runs import Run, final_metrics
from crossdistill.store import KeyCodec, KnowledgeStore, StoreDataset, write_store
from crossdistill.store.manifest import RuntimeRecord
from crossdistill.train.callbacks import Callback
from crossdistill.train.runtime import seed_everything
from crossdistill.train.trainer import History, Trainer

LossArg = (
    str
    | tuple[str, Mapping[str, Any]]
    | tuple[str, Mapping[str, Any], float]
    | Mapping[str, Any]
    | LossSpec
)


def _loss_spec(item: LossArg, where: str) -> LossSpec:
    if isinstance(item, LossSpec):
        return item
    if isinstance(item, str):
        return LossSpec(name=item)
    if isinstance(item, tuple):
        weight = item[2] if len(item) > 2 else 1.0
        return LossSpec(name=item[0], params=dict(item[1]), weight=weight)  # type: ignore[misc]
    try:
        return LossSpec(**item)
    except pydantic.ValidationError as exc:
        raise ConfigError(
            f"bad loss {where}:\n" + format_validation_error(exc, where, LossSpec)
        ) from None


def _terms(losses: Sequence[LossArg | Loss]) -> tuple[list[Term], list[LossSpec]]:
    """The Distiller's terms, and each as a recipe entry (how the run records it)."""
    terms, specs = [], []
    for i, item in enumerate(losses):
        if isinstance(item, Loss):
            terms.append(Term(type(item).__name__, item))
            given = getattr(item, "plugin_spec", None) or {}
            specs.append(LossSpec(name=plugin_name(item), params=given.get("params", {})))
            continue
        spec = _loss_spec(item, f"losses[{i}]")
        terms.append(build_term(spec, f"losses[{i}]"))
        specs.append(spec.model_copy())  # its label is set below; the caller's stays as it is
    # A loss given twice (e.g. two feature losses at different taps) is logged as name, name_2
    seen: dict[str, int] = {}
    for term, spec in zip(terms, specs, strict=True):
        seen[term.name] = seen.get(term.name, 0) + 1
        if seen[term.name] > 1:
            term.name = f"{term.name}_{seen[term.name]}"
        spec.label = term.name
    return terms, specs


def _loader(data: Any, batch_size: int, shuffle: bool, seed: int) -> Any:
    if data is None:
        return None
    if isinstance(data, DataLoader):  # your own loader: its batches put in crossdistill's form
        return ExampleBatches(data)
    return example_loader(as_distill_dataset(data), batch_size, shuffle, seed)


@dataclass
class DistillResult:
    """What :func:`distill` returns: the trained student (the module you passed in), the
    training history, the last evaluation's metrics, and the run when ``run_dir`` was given."""

    student: nn.Module
    history: History
    metrics: dict[str, Any]
    run: Run | None = None


def distill(
    teacher: nn.Module | Teacher | None,
    student: nn.Module | Student,
    train_data: Dataset | DataLoader | Split,
    losses: Sequence[LossArg | Loss] = ("ce", ("kd", {"temperature": 4.0})),
    *,
    eval_data: Dataset | DataLoader | Split | None = None,
    val_data: Dataset | DataLoader | Split | None = None,
    store: str | Path | None = None,
    batch_size: int = 128,
    seed: int = 0,
    run_dir: str | Path | None = None,
    peers: Mapping[str, nn.Module | Student] | None = None,
    **train: Any,
) -> DistillResult:
    """Train ``student`` from ``teacher`` (in place) and return a :class:`DistillResult`.

    ``train_data`` / ``eval_data``: a :class:`~crossdistill.data.Split` (e.g. from
    ``crossdistill.load_source``; a per-side split reads one field for the teacher and another
    for the student), a map-style dataset of ``(x, y)`` pairs or of dicts ``{"teacher": x,
    "student": x2, "target": y}``, a crossdistill dataset of examples, or your own DataLoader
    whose batches are ``(x, y)`` pairs or such dicts. ``losses`` are names, ``(name,
    params)`` or ``(name, params, weight)`` tuples, ``{name, params, weight}`` mappings, or
    Loss instances. ``store``: a knowledge store written by :func:`cache` for ``train_data``;
    the teacher may then be None. ``seed`` seeds training (data order, augmentation,
    dropout); the models you pass are built already, so seed before building them
    (``torch.manual_seed``) for reproducible initial weights. Other keyword arguments are
    ``train:`` settings of a recipe (``epochs=5``, ``optimizer={"name": "adamw", "lr":
    1e-3}``, ``device="cuda"``, ``progress=False``, ``loggers=["tensorboard"]`` ...);
    ``callbacks`` may hold :class:`~crossdistill.train.callbacks.Callback` instances as well as
    ``{name, params}`` specs.

    ``peers``: trainable models beside the student, by name (online / mutual distillation),
    trained in place with it by one optimizer; a loss reads them through its ``sides``
    (``{"name": "kd", "sides": {"student": "peer", "teacher": "student"}}``), each is evaluated
    (its metrics under ``<name>/``) and, with ``run_dir``, written as the run
    ``run_dir/peers/<name>``. The teacher may then be None.

    ``eval_data`` alone is evaluated after the last epoch. With ``val_data`` (validation data,
    e.g. carved from your training data) it is evaluated after every epoch — what callbacks'
    ``on_eval`` see, and what you select settings on — and ``eval_data`` once at the end:
    ``metrics`` are then ``eval_data``'s, with ``val_data``'s last under ``"validation"``.

    With ``run_dir`` the run is written there, complete: config.yaml, metrics.jsonl,
    checkpoints, student.safetensors, student.json, eval.json, and a copy of ``eval_data``
    unless it came from a data source. Commands that reopen a run must rebuild the student:
    that works for a model from ``crossdistill.build_model`` (a registered name or
    ``package.module:Callable``) or a class importable from a module whose arguments all have
    defaults; for any other module the run keeps its weights, and says so.
    """
    # Callback objects go to the Trainer as they are; the spec keeps what a recipe can name
    given = list(train.pop("callbacks", ()))
    objects = [c for c in given if isinstance(c, Callback)]
    train["callbacks"] = [c for c in given if not isinstance(c, Callback)]
    try:
        spec = TrainSpec(**train)
    except pydantic.ValidationError as exc:
        raise ConfigError(
            "bad training settings:\n" + format_validation_error(exc, "train", TrainSpec),
            hint=f"accepted: {', '.join(TrainSpec.model_fields)}",
        ) from None
    seed_everything(seed, spec.deterministic)
    if teacher is not None and not isinstance(teacher, Teacher):
        teacher = Teacher(teacher)
    wrapped = student if isinstance(student, Student) else Student(student)
    terms, loss_specs = _terms(losses)
    peers = {n: p if isinstance(p, Student) else Student(p) for n, p in (peers or {}).items()}
    distiller = Distiller(
        wrapped, terms, teacher=teacher, knowledge_given=store is not None, peers=peers
    )
    train_loader = _loader(train_data, batch_size, True, seed)
    if store is not None:
        train_loader = _from_store(train_loader, Path(store), batch_size, seed)
    eval_loader = _loader(eval_data, 4 * batch_size, False, seed)
    val_loader = _loader(val_data, 4 * batch_size, False, seed)
    # with validation data, it is evaluated each epoch and eval_data once, as the test split
    loaders = (val_loader, eval_loader) if val_loader is not None else (eval_loader, None)
    splits = ("val_data", "eval_data") if val_loader is not None else ("eval_data", "eval_data")
    # adapters are built, and mistakes found, on real batches before any training
    device = select_device(spec.device)
    eval_spec = EvalSpec(every_epochs=0 if val_loader is None else 1)
    preflight(
        distiller,
        train_loader,
        loaders[0],
        device,
        train_name="train_data",
        eval_name=splits[0],
        topk=eval_spec.topk,
        test_loader=loaders[1],
        test_name=splits[1],
    )
    fit = {"eval_loader": loaders[0], "test_loader": loaders[1]}
    run = None if run_dir is None else Run(run_dir)
    if run is not None and run.path.is_dir() and any(run.path.iterdir()):
        raise ConfigError(
            f"run_dir {run.path} already holds files",
            hint="give distill() a new or empty run_dir (a run is written once); to continue "
            "a run, use `crossdistill run RUN_DIR/config.yaml --resume`",
        )
    if run is None:
        trainer = Trainer(
            distiller,
            spec,
            eval_spec=eval_spec,
            evaluator=evaluate_student,
            callbacks=objects,
            splits=splits,
        )
        history = trainer.fit(train_loader, **fit)
        return DistillResult(wrapped.model, history, final_metrics(history, splits))
    recipe, student_spec, keep = recipe_of(
        run,
        wrapped,
        teacher,
        train_data,
        eval_data,
        loss_specs,
        seed,
        batch_size,
        spec,
        None if store is None else Path(store),
        peers,
    )
    with run.writing(recipe):
        if keep is not None:
            save_split(keep, run.data_dir / "eval")
        trainer = Trainer(
            distiller,
            spec,
            run=run,
            eval_spec=eval_spec,
            fingerprint=recipe.fingerprint(),
            evaluator=evaluate_student,
            callbacks=objects,
            splits=splits,
        )
        history = trainer.fit(train_loader, **fit)
        metrics = final_metrics(history, splits)
        run.finish(distiller, student_spec, metrics, trainer.epoch)
        specs = {name: model_spec(peer) for name, peer in peers.items()}
        run.finish_peers(distiller, recipe, metrics, trainer.epoch, specs)
    return DistillResult(wrapped.model, history, metrics, run)


# ------------------------------------------------------------------ knowledge stores


def store_fingerprint(dataset: DistillDataset, teacher: Teacher | None = None) -> dict[str, str]:
    """What a store written from Python depends on: the data (its contents and what the
    teacher reads), the augmentation, and — when the teacher is at hand — its weights."""
    found = {
        "data": digest(dataset.split.fingerprint(), dataset.split.side("teacher"), len(dataset)),
        "augmentation": digest(repr(dataset.augmentation), dataset.slots),
    }
    if teacher is not None:
        found["teacher_weights"] = weights_digest(teacher)
    return found


def cache(
    teacher: nn.Module | Teacher,
    data: Dataset | Split,
    path: str | Path,
    *,
    keys: Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
    dtype: str = "float16",
    shard_size: int = 4096,
    batch_size: int = 256,
    device: str = "auto",
    progress: bool = True,
    runtime: str = "torch",
) -> Path:
    """Run ``teacher`` once over ``data`` and keep its outputs in a knowledge store at
    ``path`` (resumable: rerun after a crash and it continues); returns ``path``.

    ``keys``: which Knowledge keys to keep (default: every key the teacher emits), or
    ``{key: {"format": "topk", "k": 5}}`` as a recipe's ``store.keys``. :func:`distill` with
    ``store=path`` then trains from it without running the teacher. ``runtime="onnx"``: the
    teacher is exported to ONNX once, checked against itself on ``data`` and run by
    onnxruntime (see ``crossdistill cache --runtime onnx``); the manifest records its parity.
    """
    if runtime not in ("torch", "onnx"):
        raise ConfigError(f"unknown teacher runtime {runtime!r}", hint="one of torch, onnx")
    teacher = teacher if isinstance(teacher, Teacher) else Teacher(teacher)
    dataset = as_distill_dataset(data)
    target = select_device(device)
    teacher = teacher.to(target)
    if keys is None:
        keys = sorted(teacher(to_device(preview_batch(dataset), target)["views"]["teacher"]))
    given = keys if isinstance(keys, Mapping) else {key: {} for key in keys}
    codecs = {key: KeyCodec.of(StoreKeySpec(**options), dtype) for key, options in given.items()}
    fingerprint = {
        **store_fingerprint(dataset, teacher),
        "teacher": digest(plugin_name(teacher.model)),
    }
    writer, record = teacher, None
    if runtime == "onnx":
        writer, found = runtime_teacher(teacher, dataset, sorted(codecs))
        record = RuntimeRecord(**found)
    write_store(
        Path(path),
        writer,
        dataset,
        codecs,
        fingerprint,
        shard_size=shard_size,
        batch_size=batch_size,
        progress=progress,
        runtime=record,
    )
    return Path(path)


def _from_store(loader: Any, path: Path, batch_size: int, seed: int) -> Any:
    if isinstance(loader, ExampleBatches):
        raise ConfigError(
            "store= reads teacher outputs by example, and your DataLoader hands out batches",
            hint="pass the dataset or Split itself as train_data when training from a store",
        )
    store = KnowledgeStore(path)
    store.check(store_fingerprint(loader.dataset), only=True)
    return example_loader(StoreDataset(loader.dataset, store), batch_size, True, seed)
