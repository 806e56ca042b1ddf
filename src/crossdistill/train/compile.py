"""``train.compile``: the training step through :func:`torch.compile`, falling back to eager.

What is compiled is the Distiller's forward on a batch that already carries the teacher's
Knowledge: the student's forward, its adapters and every loss term. The frozen teacher runs
eagerly just before it (the Trainer puts its Knowledge into the batch, as a knowledge store
would): it needs no gradients, and it may be a model that cannot be compiled at all (an ONNX
session, a hub model with hooks of its own).

The Distiller is compiled in place (:meth:`torch.nn.Module.compile`), so its parameters keep
their names: checkpoints and the exported student hold no ``_orig_mod.`` prefix, and a run
trained compiled resumes eagerly and the other way round. Evaluation and export call the
student directly, which stays eager. Under torchrun the Distiller is compiled before
DistributedDataParallel wraps it, the order torch's "Where to apply torch.compile?" guide
recommends for DDP.

When a failure is detected. :func:`torch.compile` is lazy: a backend that cannot work (inductor
without a C++ compiler, an operator it does not support) fails at the first call, or in the
first backward (inductor lowers the backward lazily), or later when a new input shape
recompiles. Setup checks only what is known without compiling (a backend name torch does not
know is a ConfigError; TorchDynamo unsupported on this Python is a fallback). Every compiled
step is guarded: when it raises anything but a crossdistill error, the step is redone eagerly
from the same random state, and when the eager step succeeds the failure was the compiler's:
the rest of the run trains eagerly after ONE :class:`CompileFallbackWarning` naming the cause
and ``--set train.compile=false``. With ``strict: true`` or ``fullgraph: true`` it is a
:class:`~crossdistill.errors.ConfigError` instead (raised before the optimizer step, so no
update is taken). When the eager step fails too, its own error is raised: it was never the
compiler's. Under DDP a failure in the first backward cannot be redone (DDP has begun that
step's reduction); the run then stops with that error.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from crossdistill.config import CompileSpec
from crossdistill.errors import ConfigError, CrossDistillError
from crossdistill.train import checkpoint as ckpt

T = TypeVar("T")

OFF = "--set train.compile=false"


class CompileFallbackWarning(UserWarning):
    """``train.compile`` could not compile the training step; the run trains eagerly."""


def known_backends() -> list[str]:
    """Every TorchDynamo backend registered in this process (debug ones included)."""
    import torch._dynamo  # torch's compiler front end: loaded only when a run compiles

    return sorted(torch._dynamo.list_backends(exclude_tags=()))


def dynamo_problem() -> str | None:
    """Why TorchDynamo cannot run in this process (None when it can)."""
    import torch._dynamo

    try:
        torch._dynamo.eval_frame.check_if_dynamo_supported()
    except Exception as exc:  # torch says why in its message (Python version, build)
        return str(exc) or type(exc).__name__
    return None


class CompiledStep:
    """The compile state of one Trainer: compiles ``module`` in place from ``spec`` (``None``:
    eager, nothing to do) and runs steps through :meth:`run`, falling back to eager once.

    ``buffers`` (default: ``module``) holds the buffers a step may update; they are restored
    before a failed step is redone."""

    def __init__(
        self, module: nn.Module, spec: CompileSpec | None, buffers: nn.Module | None = None
    ) -> None:
        self.module = module
        # what a step may update besides parameters (a frozen teacher's buffers stay as they are)
        self.buffers = list((buffers or module).buffers())
        self.spec = spec
        self.active = False  # whether the next step runs compiled
        self.fallback_cause: str | None = None  # why the run went eager, once it has
        if spec is None:
            return
        backends = known_backends()
        if spec.backend not in backends:
            raise ConfigError(
                f"train.compile.backend {spec.backend!r} is not a TorchDynamo backend torch "
                f"knows; it knows: {', '.join(backends)}",
                hint=f"use backend: inductor (or aot_eager, which needs no compiler), or {OFF}",
            )
        problem = dynamo_problem()
        if problem is not None:
            self._give_up(f"torch.compile is not supported here ({problem})", None)
            return
        options: dict[str, Any] = {
            "backend": spec.backend,
            "dynamic": spec.dynamic,
            "fullgraph": spec.fullgraph,
        }
        if spec.backend == "inductor":  # other backends take no mode (config refuses one)
            options["mode"] = spec.mode
            if torch.are_deterministic_algorithms_enabled():
                # what torch.use_deterministic_algorithms sets, left to a run that compiles
                # (seed_everything does not import the inductor)
                import torch._inductor.config as inductor_config

                inductor_config.deterministic = True
        module.compile(**options)
        self.active = True

    def run(self, compiled: Callable[[], T], eager: Callable[[], T]) -> T:
        """``compiled()`` while compiling works; on a compiler failure ``eager()`` from the same
        random state, and eager from then on (a warning, or a ConfigError when strict)."""
        if not self.active:
            return eager()
        # what a failed step may have changed before failing (a backward that fails follows a
        # forward that ran: BatchNorm statistics moved): the random state (a few KB) and the
        # buffers (small in a student: normalisation statistics, counters)
        rng = ckpt.rng_state()
        buffers = [(b, b.detach().clone()) for b in self.buffers]
        try:
            return compiled()
        except CrossDistillError:
            raise  # crossdistill's own errors say what is wrong; eager would say the same
        except Exception as exc:
            self._uncompile()
            ckpt.restore_rng(rng)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            result = eager()  # its error, if it fails too, is the real one
            self._give_up(_cause(exc), exc)
            return result

    def _uncompile(self) -> None:
        # what nn.Module.compile() set: with it cleared, calls go to the module's own forward
        self.module._compiled_call_impl = None
        self.active = False

    def _give_up(self, cause: str, exc: BaseException | None) -> None:
        """Raise (strict) or warn once that the run trains eagerly because of ``cause``."""
        assert self.spec is not None
        backend = self.spec.backend
        if self.spec.no_fallback:
            which = "fullgraph: true" if self.spec.fullgraph else "strict: true"
            raise ConfigError(
                f"train.compile could not compile the training step with backend "
                f"{backend!r}: {cause}; with {which} the run does not fall back to eager",
                hint=f"fix the cause named, set {which.split(':')[0]}: false to fall back to "
                f"eager, or {OFF} to train eagerly",
            ) from exc
        self.fallback_cause = cause
        warnings.warn(
            f"train.compile: could not compile the training step with backend {backend!r} "
            f"({cause}); training continues eagerly. To stop trying, {OFF}",
            CompileFallbackWarning,
            stacklevel=3,
        )


def _cause(exc: BaseException) -> str:
    """The first line of what the compiler raised, named by its type (its root cause where
    TorchDynamo wrapped it), for a one-line warning."""
    root = exc
    while getattr(root, "inner_exception", None) is not None:  # BackendCompilerFailed
        root = root.inner_exception  # type: ignore[attr-defined]
    lines = [line for line in str(root).strip().splitlines() if line.strip()]
    text = lines[0].strip() if lines else ""
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(root).__name__}: {text}" if text else type(root).__name__
