"""The text evaluation suite: every registered text task on one encoder, one result dict."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pydantic
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from crossdistill.domains.text.suite.base import TEXT_TASKS, TextTask
from crossdistill.domains.text.suite.encoders import TextEncoder, check_texts, load_encoder
from crossdistill.errors import ConfigError
from crossdistill.suites import SUITES, Suite

# The order of the tables; tasks registered later (plugins) follow in name order.
DEFAULT_ORDER = (
    "wordsim353",
    "simlex999",
    "lee50",
    "pang_lee",
    "newsgroups",
    "wordnet_lexname",
    "wordnet_retrieval",
    "agreement",
)


class CachedEncoder:
    """Wraps an encoder so that a text is encoded once per suite call (a WordNet gloss serves
    both the lexname and the retrieval task). Only texts not seen before reach the model."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.name = encoder.name
        self._cache: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        texts = check_texts(texts, self.name)
        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if new:
            self._cache.update(zip(new, self.encoder.encode(new, batch_size), strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


def _cached(encoder: TextEncoder) -> CachedEncoder:
    return encoder if isinstance(encoder, CachedEncoder) else CachedEncoder(encoder)


def task_names() -> list[str]:
    """Every registered text task, in table order."""
    known = TEXT_TASKS.names()
    return [n for n in DEFAULT_ORDER if n in known] + [n for n in known if n not in DEFAULT_ORDER]


def _build(name: str, teacher: CachedEncoder | None) -> TextTask:
    cls = TEXT_TASKS.get(name)
    return cls(teacher=teacher) if cls.needs_teacher else cls()


def run_text_suite(
    encoder: TextEncoder | str,
    tasks: Sequence[str] | None = None,
    quick: bool = False,
    teacher: TextEncoder | str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run text tasks on ``encoder`` (a :class:`TextEncoder` or a spec for
    :func:`~crossdistill.domains.text.suite.encoders.load_encoder`).

    ``tasks`` defaults to every registered task, skipping those that need a teacher when
    ``teacher`` is None. Returns ``{"model", "quick", "scores": {task: headline}, "details":
    {task: {every metric, "seconds"}}, "avg", "agreement"}``, where ``avg`` is the mean headline
    of the tasks that ran and count towards it (all but ``agreement``) and ``agreement`` is that
    task's headline (None when it did not run). Progress goes to stderr.

    Each text is encoded once per call. To reuse encodings across calls (one teacher for
    several students), pass a :class:`CachedEncoder`: it is used as it is.
    """
    model = _cached(load_encoder(encoder, device) if isinstance(encoder, str) else encoder)
    if teacher is None:
        teacher_encoder = None
    elif teacher is encoder or (isinstance(teacher, str) and teacher == encoder):
        teacher_encoder = model  # the same model: encode each text once for both roles
    else:
        teacher_encoder = _cached(
            load_encoder(teacher, device) if isinstance(teacher, str) else teacher
        )
    if tasks is None:
        names = [
            n
            for n in task_names()
            if teacher_encoder is not None or not TEXT_TASKS.get(n).needs_teacher
        ]
    else:
        names = list(dict.fromkeys(tasks))
        if not names:
            raise ConfigError("no text task to run", hint=f"known: {', '.join(task_names())}")
    built = {name: _build(name, teacher_encoder) for name in names}  # bad names fail up front
    scores: dict[str, float] = {}
    details: dict[str, dict[str, Any]] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        bar = progress.add_task(f"text suite: {model.name}", total=len(built))
        for name, task in built.items():
            progress.update(bar, description=f"text suite: {name}")
            start = time.perf_counter()
            result = task.run(model, quick=quick)
            result["seconds"] = round(time.perf_counter() - start, 3)
            details[name] = result
            scores[name] = float(result[task.headline])
            progress.advance(bar)
        progress.update(bar, description=f"text suite: {model.name} done")
    averaged = [scores[n] for n, t in built.items() if t.in_average]
    return {
        "model": model.name,
        "quick": bool(quick),
        "scores": scores,
        "details": details,
        "avg": float(np.mean(averaged)) if averaged else None,
        "agreement": scores.get("agreement"),
    }


class TextSuiteOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    teacher: str = "minilm"  # encoder of the agreement task; "none" skips it
    quick: bool = False
    tasks: str | None = None  # comma-separated (default: all)


@SUITES.register("text")
class TextSuite(Suite):
    """Word and document similarity, classification, WordNet retrieval and agreement with a
    teacher, for any text encoder: a run, a sentence-transformers or model2vec folder, or a
    registered text model."""

    Options = TextSuiteOptions

    def run(self, target: str, options: TextSuiteOptions) -> dict[str, Any]:
        names = None
        if options.tasks is not None:
            names = [t.strip() for t in options.tasks.split(",") if t.strip()]
        teacher = None if options.teacher == "none" else options.teacher
        return run_text_suite(target, tasks=names, quick=options.quick, teacher=teacher)
