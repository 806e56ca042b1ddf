"""The Python entry point: ``crossdistill.distill(teacher, student, train_data, losses)``.

It builds the same Distiller and Trainer as ``crossdistill run`` and returns the trained student
(the plain ``nn.Module`` you passed in, trained in place). With ``run_dir`` it leaves a complete
:class:`~crossdistill.runs.Run` — config.yaml, metrics, checkpoints, the student, student.json,
eval.json — that ``crossdistill eval``, ``export``, ``bench`` and ``report`` take like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pydantic
from torch import nn
from torch.utils.data import DataLoader, Dataset

from crossdistill._util.device import select_device, to_device
from crossdistill._util.validation import format_validation_error
from crossdistill.build import build_term
from crossdistill.config import (
    DataSpec,
    EvalSpec,
    LossSpec,
    ModelSpec,
    OutputSpec,
    Recipe,
    TapSpec,
    TeacherSpec,
    TrainSpec,
)
from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.wrappers import EnsembleTeacher, ModelWrapper, Student, Teacher
from crossdistill.data import DistillDataset, Split, as_distill_dataset, example_loader
from crossdistill.data.dataset import preview_batch
from crossdistill.data.saved import save_split
from crossdistill.data.split import DatasetSplit
from crossdistill.errors import ConfigError
from crossdistill.evaluate import evaluate_student
from crossdistill.losses import Loss
from crossdistill.models.registry import MODELS
from crossdistill.registry import plugin_name
from crossdistill.runs import Run
from crossdistill.train.runtime import seed_everything
from crossdistill.train.trainer import Trainer

log = logging.getLogger(__name__)

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
    if data is None or isinstance(data, DataLoader):
        return data
    return example_loader(as_distill_dataset(data), batch_size, shuffle, seed)


def distill(
    teacher: nn.Module | Teacher | None,
    student: nn.Module | Student,
    train_data: Dataset | DataLoader | Split,
    losses: Sequence[LossArg | Loss] = ("ce", ("kd", {"temperature": 4.0})),
    *,
    eval_data: Dataset | DataLoader | Split | None = None,
    batch_size: int = 128,
    seed: int = 0,
    run_dir: str | Path | None = None,
    **train: Any,
) -> nn.Module:
    """Train ``student`` from ``teacher`` and return it.

    ``train_data`` is a :class:`~crossdistill.data.Split` (e.g. from
    ``crossdistill.load_source``), a dataset of ``(x, y)`` pairs, a crossdistill dataset of
    examples, or a DataLoader of example batches. ``losses`` are names, ``(name, params)`` or
    ``(name, params, weight)`` tuples, ``{name, params, weight}`` mappings, or Loss instances.
    Other keyword arguments are ``train:`` settings of a recipe (``epochs=5``,
    ``optimizer={"name": "adamw", "lr": 1e-3}``, ``device="cuda"``, ``progress=False`` ...).

    With ``run_dir`` the run is written there, complete: config.yaml, metrics.jsonl,
    checkpoints, student.safetensors, student.json, eval.json, and a copy of ``eval_data``
    unless it came from a data source. Commands that reopen a run must rebuild the student:
    that works for a model from ``crossdistill.build_model`` (a registered name or
    ``package.module:Callable``) or a class importable from a module whose arguments all have
    defaults; for any other module the run keeps its weights, and says so.
    """
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
    distiller = Distiller(wrapped, terms, teacher=teacher)
    train_loader = _loader(train_data, batch_size, True, seed)
    eval_loader = _loader(eval_data, 4 * batch_size, False, seed)
    # adapters are built, and mistakes found, on a real batch before any training
    device = select_device(spec.device)
    if isinstance(train_data, DataLoader):
        preview = next(iter(train_loader))
    else:
        preview = preview_batch(train_loader.dataset)
    distiller.to(device).check(to_device(preview, device))
    eval_spec = EvalSpec(every_epochs=0)
    if run_dir is None:
        Trainer(distiller, spec, eval_spec=eval_spec, evaluator=evaluate_student).fit(
            train_loader, eval_loader
        )
        return wrapped.model

    run = Run(run_dir)
    recipe, student_spec, keep = _record(
        run, wrapped, teacher, train_data, eval_data, loss_specs, seed, batch_size, spec
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
        )
        history = trainer.fit(train_loader, eval_loader)
        run.finish(distiller, student_spec, history.eval[-1] if history.eval else {}, trainer.epoch)
    return wrapped.model


# ------------------------------------------------------------------ what a run records


def _record(
    run: Run,
    student: Student,
    teacher: Teacher | None,
    train_data: Any,
    eval_data: Any,
    losses: list[LossSpec],
    seed: int,
    batch_size: int,
    spec: TrainSpec,
) -> tuple[Recipe, ModelSpec | None, Split | None]:
    """The run's recipe, the student's spec (None: it cannot be rebuilt), and the evaluation
    split to keep in the run."""
    student_spec = model_spec(student)
    if student_spec is None:
        log.warning(
            "%s: the student (a %s built in Python) is saved as weights only: crossdistill "
            "cannot rebuild it to evaluate, export or benchmark it. Build it with "
            "crossdistill.build_model(NAME or 'package.module:Callable', params) to make it "
            "rebuildable.",
            run.path,
            type(student.model).__name__,
        )
    data, keep = _data_spec(train_data, eval_data, run, batch_size)
    recipe = Recipe(
        name=_run_name(run.path),
        seed=seed,
        data=data,
        teacher=teacher_spec(teacher) if teacher is not None else None,
        student=student_spec or ModelSpec(model=plugin_name(student.model)),
        losses=losses,
        train=spec,
        eval=EvalSpec(every_epochs=0),
        output=OutputSpec(dir=run.path.parent),
    )
    return recipe, student_spec, keep if student_spec is not None else None


def _model_ref(model: nn.Module) -> dict[str, Any] | None:
    """How to rebuild ``model``: what built it (``build_model``), or its class when that is
    importable and built without arguments gives a model of the same shapes."""
    given = getattr(model, "plugin_spec", None)
    if isinstance(given, dict):
        return {"model": given["name"], **{k: v for k, v in given.items() if k != "name"}}
    cls = type(model)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    try:
        fresh = cls()
    except Exception:  # it needs arguments crossdistill does not know
        return None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in fresh.state_dict().items()}:
        return None
    return {"model": plugin_name(cls), "params": {}}


def model_spec(wrapper: ModelWrapper) -> ModelSpec | None:
    """A recipe's model spec for ``wrapper`` (model, pipeline, outputs, taps), or None when
    crossdistill cannot say how to rebuild it."""
    ref = _model_ref(wrapper.model)
    if isinstance(wrapper.pipeline, nn.Identity):
        pipeline: list[Any] | None = []
    else:
        pipeline = getattr(wrapper.pipeline, "plugin_spec", None)
    if ref is None or pipeline is None:
        return None
    outputs = wrapper.outputs
    outputs = dict(outputs) if isinstance(outputs, Mapping) else list(outputs)
    taps = [
        TapSpec(name=t.name, path=t.path, on=t.on, select=t.select, kind=t.kind, pool=t.pool)
        for t in wrapper.taps
    ]
    return ModelSpec(
        model=ref["model"],
        params=ref.get("params", {}),
        weights=ref.get("weights"),
        outputs=outputs,
        taps=taps,
        pipeline=pipeline,
    )


def teacher_spec(teacher: Teacher) -> TeacherSpec | None:
    """The teacher as a recipe names it, when its weights can be found again: a model whose
    weights came from a file, or a registered pretrained model; None otherwise (the run then
    evaluates the student alone)."""
    if isinstance(teacher, EnsembleTeacher):
        members = [model_spec(m) for m in teacher.members]  # type: ignore[arg-type]
        if any(m is None or not _weights_known(m) for m in members):
            return None
        return TeacherSpec(members=members, member_weights=list(teacher.weights))
    spec = model_spec(teacher)
    if spec is None or not _weights_known(spec):
        return None
    return TeacherSpec(**spec.model_dump())


def _weights_known(spec: ModelSpec) -> bool:
    # a model built by name with no weights file is recorded only when its factory loads
    # pretrained weights itself (the hub models); a random init would not be the teacher
    return spec.weights is not None or bool(getattr(_registered(spec.model), "pretrained", False))


def _registered(ref: str) -> Any:

    try:
        return MODELS.resolve(ref)
    except ConfigError:
        return None


def _origin(data: Any) -> dict[str, Any] | None:
    split = data.split if isinstance(data, DistillDataset) else data
    return getattr(split, "origin", None) if isinstance(split, Split) else None


def _as_split(data: Any) -> Split | None:
    if isinstance(data, DistillDataset):
        return data.split
    if isinstance(data, Split):
        return data
    if isinstance(data, Dataset):
        return DatasetSplit(data)
    return None


def _data_spec(
    train_data: Any, eval_data: Any, run: Run, batch_size: int
) -> tuple[DataSpec, Split | None]:
    """The run's ``data:`` section, and the evaluation split to keep in the run (when it did
    not come from a data source, which the recipe names instead)."""
    train, held = _origin(train_data), _origin(eval_data)
    batches = {"batch_size": batch_size, "eval_batch_size": 4 * batch_size}
    source = held or train
    if source is not None and (train is None or held is None or _same_source(train, held)):
        return DataSpec(
            source=source["source"],
            params=source["params"],
            train_split=train["split"] if train else "train",
            eval_split=held["split"] if held else "test",
            **batches,
        ), None
    keep = _as_split(eval_data)
    if eval_data is not None and keep is None:
        log.warning("%s: eval_data is a DataLoader; the run keeps no copy of it", run.path)
    saved = {"source": "saved_split", "params": {"path": str(run.data_dir.resolve())}}
    return DataSpec(**saved, train_split="train", eval_split="eval", **batches), keep


def _same_source(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["source"] == b["source"] and a["params"] == b["params"]


def _run_name(path: Path) -> str:
    name = path.name
    if not name or any(not (c.isalnum() or c in "_.-") for c in name):
        raise ConfigError(
            f"run_dir {str(path)!r}: its folder name becomes the run's name, and may hold only "
            "letters, digits, '_', '.' and '-'",
            hint="choose another folder name",
        )
    return name
