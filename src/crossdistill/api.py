"""The Python entry point: ``crossdistill.distill(teacher, student, train_data, losses)``.

It builds the same Distiller and Trainer as ``crossdistill run`` and returns the trained student
(the plain ``nn.Module`` you passed in, trained in place).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pydantic
from torch import nn
from torch.utils.data import DataLoader, Dataset

from crossdistill._util.validation import format_validation_error
from crossdistill.config import EvalSpec, LossSpec, TrainSpec
from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.wrappers import Student, Teacher
from crossdistill.data import as_distill_dataset, example_loader
from crossdistill.data.dataset import preview_batch
from crossdistill.errors import ConfigError
from crossdistill.experiment import build_term
from crossdistill.losses import Loss
from crossdistill.train.runtime import seed_everything, select_device, to_device
from crossdistill.train.trainer import Trainer

LossArg = (
    str
    | tuple[str, Mapping[str, Any]]
    | tuple[str, Mapping[str, Any], float]
    | Mapping[str, Any]
    | LossSpec
)


def _terms(losses: Sequence[LossArg | Loss]) -> list[Term]:
    terms = []
    for i, item in enumerate(losses):
        if isinstance(item, Loss):
            terms.append(Term(type(item).__name__, item))
            continue
        if isinstance(item, str):
            spec = LossSpec(name=item)
        elif isinstance(item, tuple):
            spec = LossSpec(
                name=item[0], params=dict(item[1]), weight=item[2] if len(item) > 2 else 1.0
            )
        elif isinstance(item, Mapping):
            try:
                spec = LossSpec(**item)
            except pydantic.ValidationError as exc:
                raise ConfigError(
                    f"bad loss losses[{i}]:\n"
                    + format_validation_error(exc, f"losses[{i}]", LossSpec),
                ) from None
        else:
            spec = item
        terms.append(build_term(spec, f"losses[{i}]"))
    # A loss given twice (e.g. two feature losses at different taps) is logged as name, name_2
    seen: dict[str, int] = {}
    for term in terms:
        seen[term.name] = seen.get(term.name, 0) + 1
        if seen[term.name] > 1:
            term.name = f"{term.name}_{seen[term.name]}"
    return terms


def _loader(data: Dataset | DataLoader | None, batch_size: int, shuffle: bool, seed: int) -> Any:
    if data is None or isinstance(data, DataLoader):
        return data
    return example_loader(as_distill_dataset(data), batch_size, shuffle, seed)


def distill(
    teacher: nn.Module | Teacher | None,
    student: nn.Module | Student,
    train_data: Dataset | DataLoader,
    losses: Sequence[LossArg | Loss] = ("ce", ("kd", {"temperature": 4.0})),
    *,
    eval_data: Dataset | DataLoader | None = None,
    batch_size: int = 128,
    seed: int = 0,
    run_dir: str | Path | None = None,
    **train: Any,
) -> nn.Module:
    """Train ``student`` from ``teacher`` and return it.

    ``train_data`` is a dataset of ``(x, y)`` pairs, a crossdistill dataset of examples, or a
    DataLoader of example batches. ``losses`` are names, ``(name, params)`` or
    ``(name, params, weight)`` tuples, or Loss instances. Other keyword arguments are
    ``train:`` settings of a recipe (``epochs=5``, ``optimizer={"name": "adamw", "lr": 1e-3}``,
    ``device="cuda"``, ``progress=False`` ...). With ``run_dir``, metrics and checkpoints are
    written there.
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
    distiller = Distiller(wrapped, _terms(losses), teacher=teacher)
    train_loader = _loader(train_data, batch_size, True, seed)
    # adapters are built, and mistakes found, on a real batch before any training
    device = select_device(spec.device)
    preview = (
        preview_batch(train_loader.dataset)
        if isinstance(train_data, Dataset)
        else next(iter(train_loader))
    )
    distiller.to(device).check(to_device(preview, device))
    trainer = Trainer(
        distiller,
        spec,
        run_dir=Path(run_dir) if run_dir else None,
        eval_spec=EvalSpec(every_epochs=0),
    )
    trainer.fit(train_loader, _loader(eval_data, 4 * batch_size, False, seed))
    return wrapped.model
