"""The Distiller: teacher(s) + student + weighted losses → ``(student_knowledge, {term: loss})``.

It is the one place where the two sides meet. It knows nothing of optimizers or data loading
(the Trainer's job) nor where the teacher's Knowledge comes from: an online teacher, or a
``batch["knowledge"]`` that a knowledge store put there.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from crossdistill.config import AnnealSpec
from crossdistill.core.adapters import build_adapter
from crossdistill.core.anneal import anneal
from crossdistill.core.knowledge import Knowledge
from crossdistill.core.wrappers import Student, Teacher
from crossdistill.errors import ConfigError, CrossDistillError, ShapeError
from crossdistill.losses.registry import LOSSES, Loss

log = logging.getLogger(__name__)

AdapterArg = str | Mapping[str, Any] | nn.Module | None
STUDENT, TEACHER = "student", "teacher"  # the two sides every recipe has; peers add more


@dataclass
class Term:
    """One weighted loss term, logged under ``name``.

    ``adapter`` maps the student tensor the loss reads to the teacher's shape before the loss
    sees it: a module, or a recipe's ``"auto"`` / adapter name / ``{name, params}``, built from
    the tensors' shapes by :meth:`Distiller.check`.

    ``schedule`` anneals the weight (key ``weight``, replacing ``weight``) or a float
    hyper-parameter the loss keeps (``temperature``) over training: see
    :meth:`Distiller.set_progress`.

    ``sides`` names the models the loss reads as its student and its teacher: ``"student"``,
    a peer's name, or (teacher side) ``"teacher"``. A trainable model on the teacher side is
    read detached when ``detach`` (the term trains its student side only).
    """

    name: str
    loss: Loss
    weight: float = 1.0
    adapter: AdapterArg = None
    schedule: Mapping[str, AnnealSpec] = field(default_factory=dict)
    sides: tuple[str, str] = (STUDENT, TEACHER)
    detach: bool = True


class _ByTerm(nn.ModuleDict):
    """Modules keyed by loss-term names. A term named by import path (``pkg.mod:MyLoss``) holds
    dots, which torch refuses in a module name: they are stored as ``/``."""

    def __getitem__(self, name: str) -> nn.Module:
        return super().__getitem__(name.replace(".", "/"))

    def __setitem__(self, name: str, module: nn.Module) -> None:
        super().__setitem__(name.replace(".", "/"), module)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.replace(".", "/"))


class Distiller(nn.Module):
    """Runs both sides on a batch and returns the student's Knowledge and the weighted terms.

    The total loss is ``sum(terms.values())``. The teacher runs only when some loss reads it.
    ``peers`` are trainable models beside the student (online / mutual distillation: Zhang et
    al. 2018, Deep Mutual Learning, arXiv:1706.00384), each reading the batch's view of its own
    name; a term's ``sides`` says which models it reads, and one optimizer trains them all.
    A term's adapter maps the one student tensor its loss reads into the teacher's shape or
    space (the loss sees the adapted tensor under the same key); adapters are trained and
    checkpointed with the student but are not part of the exported student. Adapters given by
    name are built from real shapes by :meth:`check`, which must run before the optimizer is
    made (``ready`` says whether it has).
    """

    def __init__(
        self,
        student: Student,
        terms: Sequence[Term],
        teacher: Teacher | None = None,
        knowledge_given: bool = False,
        peers: Mapping[str, Student] | None = None,
    ) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("a Distiller needs at least one loss")
        self.student = student
        self.teacher = teacher
        # registered only when there are peers: a checkpoint of a run without them is unchanged
        self.peers = nn.ModuleDict(dict(peers)) if peers else None
        self.sides = {t.name: t.sides for t in terms}
        self.detached = {t.name for t in terms if t.detach}
        self._check_sides()
        self.losses = _ByTerm({t.name: t.loss for t in terms})
        self.weights = {t.name: float(t.weight) for t in terms}
        self.needs = {t.name: t.loss.needs() for t in terms}
        for t in terms:
            if t.adapter is not None and (
                len(self.needs[t.name].student) != 1 or len(self.needs[t.name].teacher) != 1
            ):
                raise ConfigError(
                    f"loss {t.name!r} reads {list(self.needs[t.name].student)} from the student "
                    f"and {list(self.needs[t.name].teacher)} from the teacher; an adapter maps "
                    "one student tensor to one teacher tensor",
                    hint=f"remove the adapter of {t.name!r}",
                )
        self.adapters = _ByTerm(
            {t.name: t.adapter for t in terms if isinstance(t.adapter, nn.Module)}
        )
        self._pending = {
            t.name: t.adapter
            for t in terms
            if t.adapter is not None and not isinstance(t.adapter, nn.Module)
        }
        self.adapter_choices: dict[str, str] = {}  # loss term -> the adapter check() built
        # annealed values live in 0-dim buffers, changed in place: a compiled step reads them as
        # tensors, where a Python float that changes would be a guard that recompiles
        self.schedules = {t.name: dict(t.schedule) for t in terms if t.schedule}
        self._scheduled = nn.Module()  # the scheduled weights (buffers, not in checkpoints)
        self._weight_buffers: dict[str, str] = {}  # loss term -> its buffer in _scheduled
        for i, t in enumerate(terms):
            if t.schedule:
                self._add_schedule(i, t)
        self.scheduled_values: dict[str, float] = {}  # "schedule/<term>/<key>" -> value now
        self.set_progress(0.0)
        self.uses_teacher = any(n.teacher and self._reads(name) for name, n in self.needs.items())
        # with a knowledge store, every batch carries the teacher's Knowledge: no teacher
        if self.uses_teacher and teacher is None and not knowledge_given:
            users = [n for n, needs in self.needs.items() if needs.teacher and self._reads(n)]
            raise ConfigError(
                f"losses {users} read the teacher, but no teacher is configured",
                hint="add a `teacher:` section to the recipe, or remove those losses",
            )

    def _check_sides(self) -> None:
        trainable = self.models()
        for name, (student, teacher) in self.sides.items():
            if student not in trainable or teacher not in [*trainable, TEACHER]:
                raise ConfigError(
                    f"loss {name!r} reads {student!r} as its student and {teacher!r} as its "
                    f"teacher; the models are {[*trainable, TEACHER]} (the student side is "
                    "trained: never the frozen teacher)",
                    hint=f"name those models in the sides of {name!r}, or add the peers",
                )

    def _reads(self, name: str) -> bool:
        """Whether term ``name``'s teacher side is the (frozen) teacher."""
        return self.sides[name][1] == TEACHER

    def models(self) -> dict[str, Student]:
        """The trainable models by side name: the student, then the peers."""
        return {STUDENT: self.student, **(dict(self.peers) if self.peers else {})}

    def model_of(self, side: str) -> nn.Module | None:
        """The model of ``side`` (None: the teacher, when its Knowledge comes from a store)."""
        return self.teacher if side == TEACHER else self.models()[side]

    def _add_schedule(self, index: int, term: Term) -> None:
        """Check ``term.schedule`` before training (keys the loss keeps, values it accepts)
        and turn the scheduled loss attributes into 0-dim buffers."""
        loss = term.loss
        params = inspect.signature(type(loss).__init__).parameters
        # what a schedule may move: the loss's float hyper-parameters, kept under their names
        numbers = [p for p in params if p != "self" and isinstance(getattr(loss, p, None), float)]
        for key, spec in term.schedule.items():
            if key != "weight" and key not in numbers:
                raise ConfigError(
                    f"loss {term.name!r}: its schedule names {key!r}, which is not a number "
                    f"the loss keeps; it can schedule: {', '.join(['weight', *numbers])}",
                    hint=f"use one of those keys in the schedule of {term.name!r}",
                )
            for end, value in (("start", spec.start), ("end", spec.end)):
                _check_scheduled(term, key, end, value)
            if key == "weight":
                buffer = f"w{index}"
                self._scheduled.register_buffer(buffer, torch.zeros(()), persistent=False)
                self._weight_buffers[term.name] = buffer
            else:
                delattr(loss, key)
                loss.register_buffer(key, torch.zeros(()), persistent=False)

    def set_progress(self, progress: float) -> None:
        """Set each scheduled weight and loss hyper-parameter to its value at training progress
        ``progress`` (optimizer steps taken / total steps, in [0, 1]); the values set are in
        ``scheduled_values`` (``"schedule/<term>/<key>"``), for the log. The Trainer calls it
        before every step; from the step alone, so a resumed run sets the same values."""
        if not self.schedules:
            return
        values: dict[str, float] = {}
        with torch.no_grad():
            for name, schedule in self.schedules.items():
                for key, spec in schedule.items():
                    value = anneal(spec, progress)
                    if key == "weight":
                        getattr(self._scheduled, self._weight_buffers[name]).fill_(value)
                        self.weights[name] = value
                    else:
                        getattr(self.losses[name], key).fill_(value)
                    values[f"schedule/{name}/{key}"] = value
        self.scheduled_values = values

    @property
    def needs_class_counts(self) -> bool:
        """Whether a loss weights classes by their frequency in the training data
        (``class_weights: balanced`` or ``effective``): :meth:`set_class_counts` must run."""
        return any(getattr(loss, "needs_class_counts", False) for loss in self.losses.values())

    def set_class_counts(self, counts: torch.Tensor) -> None:
        """Hand the number of training examples of each class (``(K,)`` integers) to every loss
        that weights classes by frequency (it has a ``set_class_counts`` method). Call it before
        training, from the training split, in a resumed run too: the losses keep the weights
        out of checkpoints, so the counts come from the data each time."""
        counts = torch.as_tensor(counts)
        if counts.dim() != 1 or counts.is_floating_point() or bool((counts < 0).any()):
            raise ConfigError(
                f"class counts must be non-negative integers of shape (classes,), got "
                f"{counts.dtype} {tuple(counts.shape)}",
                hint="count the training examples of each class, e.g. torch.bincount(labels)",
            )
        for loss in self.losses.values():
            setter = getattr(loss, "set_class_counts", None)
            if callable(setter):
                setter(counts)

    def trainable(self) -> nn.ModuleDict:
        """What the optimizer updates and a checkpoint saves: never the teacher."""
        parts: dict[str, nn.Module] = {
            "student": self.student,
            "adapters": self.adapters,
            "losses": self.losses,
        }
        if self.peers is not None:
            parts["peers"] = self.peers
        return nn.ModuleDict(parts)

    def teacher_knowledge(self, batch: Mapping[str, Any]) -> Knowledge:
        if "knowledge" in batch:  # precomputed (knowledge store)
            return Knowledge(batch["knowledge"], source="knowledge store")
        if not self.uses_teacher:
            return Knowledge(source="teacher")
        if self.teacher is None:
            raise ConfigError(
                "the losses read the teacher, and this batch carries no teacher Knowledge "
                "(there is no teacher to run: its outputs come from a knowledge store)",
                hint="read the batches from the store the run was given",
            )
        return self.teacher(batch["views"][self.teacher.view])

    def knowledge(self, batch: Mapping[str, Any]) -> dict[str, Knowledge]:
        """Every model's Knowledge of ``batch`` by side name: the student and each peer on the
        view of its name (a peer without one reads the student's), and the teacher's (empty
        when no term reads it)."""
        views = batch["views"]
        found = {
            side: model(views.get(side, views[STUDENT])) for side, model in self.models().items()
        }
        return {**found, TEACHER: self.teacher_knowledge(batch)}

    def forward(self, batch: Mapping[str, Any]) -> tuple[Knowledge, dict[str, torch.Tensor]]:
        knowledge = self.knowledge(batch)
        return knowledge[STUDENT], self._terms(knowledge, batch.get("target"))

    def _pair(self, name: str, knowledge: Mapping[str, Knowledge]) -> tuple[Knowledge, Knowledge]:
        """The Knowledge term ``name`` reads as its student and as its teacher: a trainable
        teacher side detached (unless the term says otherwise)."""
        student, teacher = (knowledge[side] for side in self.sides[name])
        if not self._reads(name) and name in self.detached:
            teacher = Knowledge({k: v.detach() for k, v in teacher.items()}, source=teacher.source)
        return student, teacher

    def _terms(
        self, knowledge: Mapping[str, Knowledge], target: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Every weighted loss term (through its adapter, if it has one)."""
        terms: dict[str, torch.Tensor] = {}
        for name, needs in self.needs.items():
            loss = self.losses[name]
            student, teacher = self._pair(name, knowledge)
            student.require(needs.student, f"loss {name!r}")
            teacher.require(needs.teacher, f"loss {name!r}")
            if needs.target and target is None:
                raise ConfigError(f"loss {name!r} needs targets, but the data has none")
            seen = student
            if name in self.adapters:  # the loss reads the adapted tensor under the same key
                key = needs.student[0]
                seen = Knowledge(student, source=student.source)
                seen[key] = self.adapters[name](student[key])
            buffer = self._weight_buffers.get(name)
            weight = self.weights[name] if buffer is None else getattr(self._scheduled, buffer)
            try:
                terms[name] = weight * loss(seen, teacher, target)
            except ShapeError as exc:  # name the recipe's term: a loss may appear twice
                raise ShapeError(f"loss {name!r}: {exc.message}", hint=exc.hint) from None
            except TypeError as exc:
                moved = [k for k in self.schedules.get(name, {}) if k != "weight"]
                if not moved:
                    raise
                raise ConfigError(
                    f"loss {name!r} failed with its scheduled {moved} ({exc}): a scheduled "
                    "value is a 0-dim tensor, and this loss uses it where only a Python number "
                    "will do",
                    hint=f"remove {moved} from the schedule of {name!r}",
                ) from exc
        return terms

    @property
    def ready(self) -> bool:
        """Whether every adapter and lazy loss parameter exists (after :meth:`check`)."""
        return not self._pending and not any(
            nn.parameter.is_lazy(p) for p in self.trainable().parameters()
        )

    @torch.no_grad()
    def check(self, batch: Mapping[str, Any], num_classes: int | None = None) -> None:
        """One forward on a small batch, before training, so that a loss that needs what a
        model does not produce, or tensors of the wrong shape, fail before any output is
        written. Builds the adapters named in the recipe from the shapes it sees (and lazy
        loss modules materialize). Runs in eval mode: no BatchNorm statistics change.

        ``num_classes`` (of the data) is checked only where it must hold: against the logits
        that a loss reading hard labels takes (a teacher of another label space is fine for
        losses that learn its distribution)."""
        was_training = self.training
        self.eval()
        try:
            # one forward of every model serves both: the adapters' shapes, then the losses
            knowledge = self.knowledge(batch)
            for name in self.needs:
                student, teacher = self._pair(name, knowledge)
                if num_classes:
                    self._check_label_space(name, student, teacher, num_classes)
                self._warn_probabilities(name, student, teacher)
                if name in self._pending:
                    self._build_adapter(name, student, teacher)
            self._terms(knowledge, batch.get("target"))
        finally:
            self.train(was_training)

    def _warn_probabilities(self, name: str, student: Knowledge, teacher: Knowledge) -> None:
        """Logit losses take logits; a model whose "logits" are probabilities already (in
        [0, 1], rows summing to 1) would be softmaxed twice without a word."""
        needs = self.needs[name]
        for side, knowledge, keys in zip(
            self.sides[name], (student, teacher), (needs.student, needs.teacher), strict=True
        ):
            for key in keys:
                x = knowledge.get(key)
                if x is None or "logits" not in key or x.dim() < 2 or not x.is_floating_point():
                    continue
                rows = x.detach().float()
                if (
                    rows.min() >= 0
                    and rows.max() <= 1
                    and torch.allclose(rows.sum(-1), torch.ones(()), atol=1e-3)
                ):
                    log.warning(
                        "loss %r: the %s's %r looks like probabilities (values in [0, 1], "
                        "rows summing to 1), and the loss takes logits: name the model's "
                        "output before its softmax, or use a loss that reads probabilities "
                        "(bce_kd with teacher_probabilities: true for sigmoid outputs)",
                        name,
                        side,
                        key,
                    )

    def _check_label_space(
        self, name: str, student: Knowledge, teacher: Knowledge, classes: int
    ) -> None:
        needs = self.needs[name]
        if not needs.target:
            return
        for role, side, knowledge, keys in zip(
            (STUDENT, TEACHER),
            self.sides[name],
            (student, teacher),
            (needs.student, needs.teacher),
            strict=True,
        ):
            for key in keys:
                width = knowledge[key].shape[-1] if key in knowledge else None
                if key.split("/")[-1].startswith("logits") and width not in (None, classes):
                    where = side if side in (STUDENT, TEACHER) else f"peers.{side}"
                    raise ShapeError(
                        f"loss {name!r} reads hard labels of the data's {classes} classes "
                        f"against the {side}'s {key!r}, which has {width}",
                        hint=f"give the {side} a head of {classes} classes "
                        f"({where}.params.num_classes: {classes}, or the model's own name "
                        f"for it), or let {name!r} read another output of the {side} "
                        f"(its params.{role}: KEY); losses that learn the teacher's "
                        "distribution (kd, ...) need no such head",
                    )

    def _build_adapter(self, name: str, student: Knowledge, teacher: Knowledge) -> None:
        """The pending adapter of term ``name``, from the real shapes and the layouts the taps
        declare; which one was built is kept in ``adapter_choices`` (term → adapter name)."""
        spec = self._pending.pop(name)
        (s_key,), (t_key,) = self.needs[name].student, self.needs[name].teacher
        student.require((s_key,), f"loss {name!r}")
        teacher.require((t_key,), f"loss {name!r}")
        s, t = student[s_key], teacher[t_key]
        # no teacher model when its Knowledge comes from a store: its taps are not known here
        s_side, t_side = self.sides[name]
        s_model, t_model = self.model_of(s_side), self.model_of(t_side)
        assert s_model is not None
        declared = (s_model.layout_of(s_key), t_model.layout_of(t_key) if t_model else None)
        try:
            adapter = build_adapter(
                spec,
                s.shape[1:],
                t.shape[1:],
                f"loss {name!r}",
                student_layout=declared[0],
                teacher_layout=declared[1],
            )
        except ShapeError as exc:
            described = t_model.describe(t_key) if t_model else repr(t_key)
            raise ShapeError(
                f"loss {name!r}: {exc.message}: {s_side} {s_model.describe(s_key)} "
                f"{tuple(s.shape)}, {t_side} {described} {tuple(t.shape)}",
                hint=exc.hint,
            ) from None
        self.adapters[name] = adapter.to(s.device)
        chosen = getattr(adapter, "plugin_spec", {}).get("name") or type(adapter).__qualname__
        self.adapter_choices = {**self.adapter_choices, name: chosen}
        auto = (spec if isinstance(spec, str) else spec.get("name")) == "auto"
        layouts = [
            f"{layout}{'' if given else ', read from its rank'}"
            for layout, given in zip(adapter.layouts, declared, strict=True)
        ]
        log.info(
            "loss %r: %s adapter %r maps the %s's %r %s (%s) to the %s's %r %s (%s)",
            name,
            "auto chose" if auto else "named",
            chosen,
            s_side,
            s_key,
            tuple(s.shape[1:]),
            layouts[0],
            t_side,
            t_key,
            tuple(t.shape[1:]),
            layouts[1],
        )

    def extra_parameters(self) -> int:
        """Trainable parameters beyond the student (adapters, loss modules)."""
        return sum(p.numel() for m in (self.adapters, self.losses) for p in m.parameters())


def _check_scheduled(term: Term, key: str, end: str, value: float) -> None:
    """A schedule's ``start``/``end`` must be a value the loss accepts: finite, a weight
    ``>= 0``, and a hyper-parameter its own constructor takes (rebuilt with it to ask)."""
    where = f"loss {term.name!r}: schedule {key}.{end} = {value!r}"
    if not math.isfinite(value) or (key == "weight" and value < 0):
        bound = " >= 0" if key == "weight" else ""
        raise ConfigError(
            f"{where} must be a finite number{bound}", hint=f"change {key}.{end} in the schedule"
        )
    if key == "weight":
        return
    if "temperature" in key and value <= 0:  # dividing logits by it
        raise ConfigError(f"{where}: a temperature must be > 0", hint=f"change {key}.{end}")
    loss = term.loss
    spec = getattr(loss, "plugin_spec", None)  # how a recipe built it: rebuilt the same way
    try:
        if isinstance(spec, Mapping):
            LOSSES.build(
                spec["name"], {**spec.get("params", {}), key: value}, f"loss {term.name!r}"
            )
        else:
            try:
                type(loss)(**{key: value})
            except TypeError:  # other required arguments: cannot ask the constructor
                return
    except (CrossDistillError, ValueError) as exc:
        message = exc.message if isinstance(exc, CrossDistillError) else str(exc)
        raise ConfigError(f"{where}: {message}", hint=f"change {key}.{end}") from None
