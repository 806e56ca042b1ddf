"""Teacher and Student: a model, its input pipeline and its taps, emitting :class:`Knowledge`.

A teacher is frozen (no gradients, always in eval mode); an ensemble of teachers is a teacher.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.core.taps import Layout, Tap, TapRecorder
from crossdistill.errors import ConfigError, KnowledgeError

OutputNames = Sequence[str] | Mapping[str, str]


class ModelWrapper(nn.Module):
    """A model plus its input pipeline and taps.

    ``outputs`` names what the model's forward returns: a list of Knowledge names for a tensor or
    a tuple (``["logits"]``, ``["logits", "embedding"]``) or of the entries to keep from a dict
    (``["scores", "query"]``), or a mapping from Knowledge name to the key of a dict-like output
    (``{"embedding": "sentence_embedding"}``).
    """

    role = "model"

    def __init__(
        self,
        model: nn.Module,
        *,
        outputs: OutputNames = (LOGITS,),
        taps: Iterable[Tap] = (),
        pipeline: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.pipeline = pipeline if pipeline is not None else nn.Identity()
        self.outputs: OutputNames = (
            dict(outputs) if isinstance(outputs, Mapping) else tuple(outputs)
        )
        self.taps = tuple(taps)
        self._recorder = TapRecorder(model, self.taps) if self.taps else None

    def describe(self, key: str) -> str:
        """``key`` and the module it is tapped from, for error messages."""
        for tap in self.taps:
            if tap.key == key:
                return f"{key!r} (the {tap.on} of module {tap.path!r})"
        return repr(key)

    def layout_of(self, key: str) -> Layout | None:
        """The layout the tap of ``key`` declares; ``None``: read it from the rank."""
        return next((tap.layout for tap in self.taps if tap.key == key), None)

    def forward(self, inputs: Any) -> Knowledge:
        out = self.model(self.pipeline(inputs))
        knowledge = Knowledge(self._name_outputs(out), source=self.role)
        if self._recorder is not None:
            knowledge.update(self._recorder.pop())
        return knowledge

    def _name_outputs(self, out: Any) -> dict[str, torch.Tensor]:
        if isinstance(self.outputs, dict):
            try:
                return {name: out[key] for name, key in self.outputs.items()}
            except (KeyError, TypeError, IndexError) as exc:
                raise KnowledgeError(
                    f"{self.role} output has no {exc} for outputs={self.outputs}",
                    hint=f"its forward returned a {type(out).__name__}"
                    + (f" with keys {list(out)}" if isinstance(out, Mapping) else ""),
                ) from None
        if isinstance(out, torch.Tensor):
            return {self.outputs[0]: out}
        if isinstance(out, Mapping):  # a list of names picks the dict's entries of those names
            missing = [name for name in self.outputs if name not in out]
            if missing:
                raise KnowledgeError(
                    f"{self.role} output has no {missing} for outputs={list(self.outputs)}",
                    hint=f"its forward returned a dict with keys {list(out)}; map knowledge "
                    "names to them with `outputs: {knowledge_name: output_key}` in the recipe",
                )
            return {name: out[name] for name in self.outputs}
        if isinstance(out, (tuple, list)):
            # extra elements the recipe does not name are ignored on purpose
            return dict(zip(self.outputs, out, strict=False))
        raise KnowledgeError(
            f"{self.role}'s forward returned a {type(out).__name__}",
            hint="name its parts with `outputs: {knowledge_name: output_key}` in the recipe",
        )


class Student(ModelWrapper):
    """The model being trained."""

    role = "student"


class Teacher(ModelWrapper):
    """A frozen model: parameters do not require grad, it stays in eval mode, forward is no-grad."""

    role = "teacher"
    # the Example view it reads (batch["views"][teacher.view])
    view = "teacher"

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    def forward(self, inputs: Any) -> Knowledge:
        with torch.no_grad():
            return super().forward(inputs)


class EnsembleTeacher(Teacher):
    """Several teachers as one: the weighted mean of the members' logits, embeddings and scores.

    Every member's own Knowledge is kept too, as ``member<i>/<key>`` (``member0/logits``,
    ``member1/features/b3``): a loss may read one member (a ``kd`` term on ``member0/logits``)
    or weigh the members per example itself (``multi_kd``). A knowledge store holds only the
    keys the losses read, so the extra keys cost nothing there.
    """

    averaged = ("logits", "embedding", "scores")

    def __init__(self, members: Sequence[Teacher], weights: Sequence[float] | None = None) -> None:
        if not members:
            raise ConfigError("an ensemble teacher needs at least one member")
        weights = list(weights) if weights is not None else [1.0] * len(members)
        valid = all(math.isfinite(w) and w >= 0 for w in weights) and sum(weights) > 0
        if len(weights) != len(members) or not valid:
            raise ConfigError(
                f"ensemble weights {weights} do not fit {len(members)} members",
                hint="give one non-negative weight per member, not all zero",
            )
        nn.Module.__init__(self)
        self.members = nn.ModuleList(members)
        total = float(sum(weights))
        self.weights = [w / total for w in weights]
        self.requires_grad_(False)
        nn.Module.train(self, False)

    def describe(self, key: str) -> str:
        head, _, rest = key.partition("/")
        index = head.removeprefix("member")
        if head.startswith("member") and index.isdigit() and int(index) < len(self.members):
            return f"{key!r} (member {index}: {self.members[int(index)].describe(rest)})"
        return repr(key)

    def layout_of(self, key: str) -> Layout | None:
        head, _, rest = key.partition("/")
        index = head.removeprefix("member")
        if head.startswith("member") and index.isdigit() and int(index) < len(self.members):
            return self.members[int(index)].layout_of(rest)
        return None

    def forward(self, inputs: Any) -> Knowledge:
        with torch.no_grad():
            outs = [member(inputs) for member in self.members]
        knowledge = Knowledge(source=self.role)
        for key in self.averaged:
            if all(key in o for o in outs):
                knowledge[key] = sum(w * o[key] for w, o in zip(self.weights, outs, strict=True))
        for i, o in enumerate(outs):
            knowledge.update({f"member{i}/{k}": v for k, v in o.items()})
        return knowledge
