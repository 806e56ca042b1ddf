"""The :class:`Callback` interface, its registry, and how the Trainer calls callbacks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from crossdistill.config import TrainSpec
from crossdistill.errors import CallbackError, ConfigError, CrossDistillError, require
from crossdistill.registry import Registry, plugin_name, validate_params
from crossdistill.train import checkpoint as ckpt

# crossdistill.train.trainer's Trainer and History: that module imports this one, so the hooks'
# annotations name them without importing them
Trainer = Any
History = Any


class Callback:
    """Code the Trainer calls at fixed points of training; every hook does nothing by default.

    Hooks receive the :class:`~crossdistill.train.trainer.Trainer` (its ``epoch``, ``step``,
    ``run``, ``distiller``, ``optimizer``, ``spec`` ...) and the record the Trainer also writes
    to ``metrics.jsonl``, in this order::

        on_start                          once, after a resume (trainer.step: where it goes on)
          on_step        (per logged step: every train.log_every batches and an epoch's last)
          on_epoch       (an epoch done and checkpointed)
          on_eval        (after on_epoch, when the epoch was evaluated)
          on_checkpoint  (a checkpoint written: end of epoch, or mid-epoch)
        on_end                            training finished
        close                             always last, also after a failure

    Epoch, evaluation and epoch-end checkpoint hooks run after the checkpoint is written, so
    a callback that fails leaves a run that ``--resume`` continues from that checkpoint. A
    callback's exception stops training as a :class:`~crossdistill.errors.CallbackError` that
    names it. Under torchrun only rank 0 calls a callback, unless its ``all_ranks`` is True.
    ``requires = ("package", "pip install package")`` has a recipe naming the callback
    checked for that package before any model is built.
    """

    all_ranks: bool = False
    # (module, how to install it): an optional package the callback needs, checked with the
    # recipe (check_callbacks) before any expensive work
    requires: tuple[str, str] | None = None

    def on_start(self, trainer: Trainer) -> None:
        """Training starts (or continues: after ``--resume``, ``trainer.step`` > 0)."""

    def on_step(self, trainer: Trainer, step: int, record: dict[str, Any]) -> None:
        """A logged optimizer step ``step`` (counted from 1): ``record`` has ``epoch``
        (0-based), ``lr``, ``loss`` and every loss term."""

    def on_epoch(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """Epoch ``epoch`` (counted from 1) done: ``record`` has ``train_loss``, ``seconds``,
        ``steps_per_s`` and ``step``."""

    def on_eval(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        """The student evaluated after epoch ``epoch``: the evaluator's scalar ``metrics``."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """A checkpoint was written to ``path`` (what ``--resume`` continues from)."""

    def on_end(self, trainer: Trainer, history: History) -> None:
        """Training finished; ``history`` is what :meth:`Trainer.fit` returns."""

    def close(self, trainer: Trainer) -> None:
        """Release files and connections; called after ``on_end`` and after a failure."""


CALLBACKS: Registry[type[Callback]] = Registry("callback", base=Callback, returns=Callback)


def build_callbacks(spec: TrainSpec) -> list[Callback]:
    """The callbacks a recipe's ``train.loggers`` and ``train.callbacks`` name, built (a
    logger whose package is missing fails here, before any training)."""
    built = [
        CALLBACKS.build(s.name, s.params, where=f"train.loggers[{i}]")
        for i, s in enumerate(spec.loggers)
    ]
    built += [
        CALLBACKS.build(s.name, s.params, where=f"train.callbacks[{i}]")
        for i, s in enumerate(spec.callbacks)
    ]
    return built


def check_callbacks(spec: TrainSpec) -> None:
    """What :func:`build_callbacks` would find wrong, found without building anything: unknown
    names, import paths that do not import, bad params, a logger's package not installed."""
    for key in ("loggers", "callbacks"):
        for i, s in enumerate(getattr(spec, key)):
            where = f"train.{key}[{i}]"
            factory = CALLBACKS.resolve(s.name, where)
            validate_params(factory, s.params, where, f"callback {s.name!r}", {})
            needed = getattr(factory, "requires", None)
            if needed is not None:
                require(needed[0], f"{where}: the {s.name} logger", needed[1])


def run_folder(trainer: Trainer, attribute: str, given: str | None, who: str) -> Path:
    """Where a logger writes: ``given`` (its ``log_dir`` param), else the run's folder
    ``attribute`` (``tensorboard_dir``...); a trainer without a run needs ``given``."""
    if given is not None:
        return Path(given)
    folder = getattr(trainer.run, attribute, None)
    if folder is None:
        raise ConfigError(
            f"the {who} logger has no run folder to write to",
            hint="train with a run (a recipe, or distill(..., run_dir=...)), or give the "
            "logger params: {log_dir: PATH}",
        )
    return Path(folder)


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The numbers of a log record that loggers plot: every int or float value but the
    record's ``time``, ``kind``, ``step`` and ``epoch`` (and booleans)."""
    for key, value in record.items():
        if key in ("time", "kind", "step", "epoch") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            yield key, float(value)


def read_json_dict(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class CheckpointedLogger(Callback):
    """A logger whose values reach its backend at each checkpoint and at the end, never
    before: a resumed run redoes what came after its last checkpoint, so it logs no step twice.
    A failure drops what is pending and ends the backend's run as failed.

    Values are ``(name, value, step, time)``: ``train/<term>`` per logged step,
    ``epoch/<value>``, ``eval/<metric>``, against the optimizer step. A subclass sends them
    (:meth:`_send`) and ends its backend's run (:meth:`_end`).
    """

    def __init__(self) -> None:
        self.pending: list[tuple[str, float, int, float]] = []

    def _send(self, values: list[tuple[str, float, int, float]]) -> None:
        raise NotImplementedError

    def _end(self, failed: bool) -> None:
        """End the backend's run (once: later calls do nothing)."""
        raise NotImplementedError

    def _add(self, prefix: str, record: dict[str, Any], step: int) -> None:
        at = float(record.get("time", 0.0))
        self.pending += [(f"{prefix}/{key}", value, step, at) for key, value in scalars(record)]

    def _flush(self) -> None:
        if self.pending:
            self._send(self.pending)
        self.pending = []

    def on_step(self, trainer: Trainer, step: int, record: dict[str, Any]) -> None:
        self._add("train", record, step)

    def on_epoch(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        self._add("epoch", record, trainer.step)

    def on_eval(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        self._add("eval", metrics, trainer.step)
        if trainer.run is None:  # no checkpoints to wait for
            self._flush()

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        # what a checkpoint covers is never redone by a resume: safe to send now
        self._flush()

    def on_end(self, trainer: Trainer, history: History) -> None:
        self._flush()
        self._end(failed=False)

    def close(self, trainer: Trainer) -> None:
        # a failure: what came after the last checkpoint is dropped (a resume redoes it)
        self.pending = []
        with contextlib.suppress(Exception):
            self._end(failed=True)


class CallbackList:
    """The Trainer's callbacks, called in order; an exception becomes a CallbackError naming
    the callback, the hook and where training stood."""

    def __init__(self, callbacks: Iterable[Callback], main: bool = True) -> None:
        self.callbacks = [c for c in callbacks if main or c.all_ranks]
        for c in self.callbacks:
            if not isinstance(c, Callback):
                raise ConfigError(
                    f"callbacks: {c!r} is not a Callback",
                    hint="subclass crossdistill.train.callbacks.Callback",
                )

    def __len__(self) -> int:
        return len(self.callbacks)

    def call(self, hook: str, trainer: Trainer, *args: Any) -> None:
        """Call ``hook`` on every callback."""
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(trainer, *args)
            except Exception as exc:
                raise self.error(callback, hook, trainer, exc) from exc

    def close(self, trainer: Trainer, failing: bool) -> None:
        """Every callback's ``close``; while another error propagates (``failing``), theirs
        are dropped so as not to hide it."""
        first: CallbackError | None = None
        for callback in self.callbacks:
            try:
                callback.close(trainer)
            except Exception as exc:
                if first is None and not failing:
                    first = self.error(callback, "close", trainer, exc)
                    first.__cause__ = exc
        if first is not None:
            raise first

    @staticmethod
    def error(callback: Callback, hook: str, trainer: Trainer, exc: Exception) -> CallbackError:
        last = _last_checkpoint(trainer)
        # crossdistill's own errors speak for themselves (and carry their own hint)
        detail = (
            exc.message if isinstance(exc, CrossDistillError) else f"{type(exc).__name__}: {exc}"
        )
        hint = (
            "fix the callback (or remove it from train.loggers / train.callbacks), then "
            "continue with `crossdistill run RECIPE --resume`"
            if last
            else "fix the callback (or remove it from train.loggers / train.callbacks) and run "
            "again"
        )
        if isinstance(exc, CrossDistillError) and exc.hint:
            hint = f"{exc.hint}; {hint}"
        return CallbackError(
            f"callback {plugin_name(callback)!r} failed in {hook} at epoch {trainer.epoch + 1}, "
            f"step {trainer.step}: {detail}; training stopped. The last checkpoint is "
            f"{last or '(none yet)'}",
            hint=hint,
        )


def _last_checkpoint(trainer: Trainer) -> Path | None:
    if trainer.run is None:
        return None
    with contextlib.suppress(Exception):  # a message must not fail on an unreadable folder
        found: Sequence[Path] = ckpt.list_checkpoints(trainer.run.checkpoints)
        return found[-1] if found else None
    return None
