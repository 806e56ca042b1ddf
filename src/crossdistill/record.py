"""What a run records of a call to :func:`crossdistill.distill`: a recipe built from Python
objects — the student and teacher as model specs when they can be rebuilt, the data by source
name or as a split saved into the run, the losses as given."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from crossdistill.config import (
    DataSpec,
    EvalSpec,
    LossSpec,
    ModelSpec,
    OutputSpec,
    Recipe,
    StoreSpec,
    TapSpec,
    TeacherSpec,
    TrainSpec,
)
from crossdistill.core.wrappers import EnsembleTeacher, ModelWrapper, Student, Teacher
from crossdistill.data import DistillDataset, Split
from crossdistill.data.split import DatasetSplit
from crossdistill.errors import ConfigError
from crossdistill.models.registry import MODELS
from crossdistill.registry import plugin_name
from crossdistill.runs import Run

log = logging.getLogger(__name__)


def recipe_of(
    run: Run,
    student: Student,
    teacher: Teacher | None,
    train_data: Any,
    eval_data: Any,
    losses: list[LossSpec],
    seed: int,
    batch_size: int,
    spec: TrainSpec,
    store: Path | None = None,
    peers: Mapping[str, Student] | None = None,
) -> tuple[Recipe, ModelSpec | None, Split | None]:
    """The run's recipe, the student's spec (None: it cannot be rebuilt), and the evaluation
    split to keep in the run. ``store``: the knowledge store the teacher's outputs came from;
    ``peers``: the trainable models beside the student."""
    student_spec = _rebuildable(student, "student", run)
    peer_specs = {
        name: _rebuildable(peer, f"peer {name!r}", run) for name, peer in (peers or {}).items()
    }
    data, keep = _data_spec(train_data, eval_data, run, batch_size)
    recipe = Recipe(
        name=_run_name(run.path),
        seed=seed,
        data=data,
        teacher=teacher_spec(teacher) if teacher is not None else None,
        student=student_spec or ModelSpec(model=plugin_name(student.model)),
        peers={
            name: spec or ModelSpec(model=plugin_name(peers[name].model))
            for name, spec in peer_specs.items()
        },
        losses=losses,
        store=None if store is None else StoreSpec(path=store.resolve()),
        train=spec,
        eval=EvalSpec(every_epochs=0),
        output=OutputSpec(dir=run.path.parent),
    )
    return recipe, student_spec, keep if student_spec is not None else None


def _rebuildable(wrapper: ModelWrapper, what: str, run: Run) -> ModelSpec | None:
    """:func:`model_spec` of ``wrapper``, with a warning when there is none."""
    spec = model_spec(wrapper)
    if spec is None:
        log.warning(
            "%s: the %s (a %s built in Python) is saved as weights only: crossdistill "
            "cannot rebuild it to evaluate, export or benchmark it. Build it with "
            "crossdistill.build_model(NAME or 'package.module:Callable', params) to make it "
            "rebuildable.",
            run.path,
            what,
            type(wrapper.model).__name__,
        )
    return spec


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
        TapSpec(
            name=t.name,
            path=t.path,
            on=t.on,
            select=t.select,
            kind=t.kind,
            pool=t.pool,
            layout=t.layout,
        )
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
