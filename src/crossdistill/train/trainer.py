"""The Trainer: optimizer, schedule, seeds, AMP, DDP, progress, metrics.jsonl, checkpoints, resume.

It drives a :class:`~crossdistill.core.distiller.Distiller` and knows nothing about which losses
exist. Data order and augmentation are functions of (seed, epoch), so a run resumed from a
checkpoint (at the end of an epoch, or mid-epoch with ``checkpoint_every_steps``) continues
exactly as the uninterrupted run would.

Under torchrun (a process group is initialised) the Distiller is wrapped in
DistributedDataParallel with the teacher's parameters and buffers left out: the student,
adapters and loss modules are synchronised, the frozen teacher is replicated as it is. Rank 0
alone logs, evaluates and writes checkpoints; checkpoints hold every rank's RNG state.

With ``train.compile`` the Distiller's forward (student, adapters, loss terms) and its backward
run through ``torch.compile``, the frozen teacher eagerly before it; a step the compiler fails
is redone eagerly and the run continues eagerly (:mod:`crossdistill.train.compile`).

Annealed loss weights and hyper-parameters (a loss's ``schedule:``) are set before every step
from the step count alone (:meth:`Distiller.set_progress`, progress = steps taken / all steps),
so a resumed run trains with the same values; each step record logs them
(``schedule/<term>/<key>``).

A momentum teacher (:class:`~crossdistill.core.ema.EMATeacher`) starts as an exact copy of the
student and moves towards it after every optimizer step the optimizer took (not after one the
fp16 loss scaler skipped); its state is in every checkpoint, so a resumed run continues it
exactly, and evaluation's agreement with the teacher is agreement with the average.

Callbacks (:mod:`crossdistill.train.callbacks`: the loggers of ``train.loggers``, the user code
of ``train.callbacks`` and the ``callbacks=`` given to the Trainer) are called at each logged
step, epoch, evaluation and checkpoint, on rank 0 only unless a callback sets ``all_ranks``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from crossdistill._util.device import amp_dtype, autocast, select_device, to_device
from crossdistill._util.files import AppendLog
from crossdistill._util.progress import ProgressBar
from crossdistill.config import EvalSpec, OptimizerSpec, ScheduleSpec, TrainSpec
from crossdistill.core.distiller import Distiller
from crossdistill.core.ema import EMATeacher
from crossdistill.data.dataset import SideBatches
from crossdistill.errors import CallbackError, CheckpointError, ConfigError, NonFiniteLossError
from crossdistill.evaluate import evaluate_student
from crossdistill.train import checkpoint as ckpt
from crossdistill.train.callbacks import Callback, CallbackList, build_callbacks
from crossdistill.train.compile import CompiledStep
from crossdistill.train.prequential import Prequential


def build_optimizer(params: Iterable[nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if spec.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=spec.lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov and spec.momentum > 0,
            weight_decay=spec.weight_decay,
        )
    return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)


def lr_factor(step: int, spec: ScheduleSpec, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (linear warmup first)."""
    total = max(1, steps_per_epoch * epochs)
    warmup = round(spec.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if spec.name == "constant":
        return 1.0
    if spec.name == "step":
        epoch = step // max(1, steps_per_epoch)
        return spec.gamma ** sum(epoch >= m for m in spec.milestones)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class History:
    """What :meth:`Trainer.fit` returns: mean training loss and evaluation metrics per epoch
    (on the validation split, when there is one), and the one evaluation of the test split
    after the last epoch (``test``: empty without a ``test_loader``)."""

    train_loss: list[float] = field(default_factory=list)
    eval: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)


class Outputs(Protocol):
    """Where a Trainer writes (a :class:`crossdistill.runs.Run` is one)."""

    @property
    def metrics_file(self) -> Path: ...

    @property
    def checkpoints(self) -> Path: ...


# (student, loader, teacher, device, amp dtype, topk) -> {metric: value}
Evaluator = Callable[..., dict[str, float]]


class Trainer:
    """Trains ``distiller``'s student (and adapters) with the settings of a recipe's ``train:``.

    ``run`` receives the metrics (``run.metrics_file``) and checkpoints (``run.checkpoints``);
    without one nothing is written. ``evaluator`` scores the student on the evaluation loader
    (default: :func:`crossdistill.evaluate.evaluate_student`). ``callbacks`` are called after
    those ``spec.loggers`` and ``spec.callbacks`` name (built here: a logger whose package is
    missing fails before any training).
    """

    def __init__(
        self,
        distiller: Distiller,
        spec: TrainSpec | None = None,
        *,
        run: Outputs | None = None,
        eval_spec: EvalSpec | None = None,
        fingerprint: str = "",
        evaluator: Evaluator = evaluate_student,
        callbacks: Sequence[Callback] = (),
        splits: tuple[str, str] | None = None,
    ) -> None:
        self.spec = spec or TrainSpec()
        # the names of the evaluation and test splits, logged with each evaluation
        self.splits = splits
        self.eval_spec = eval_spec or EvalSpec()
        self.run = run
        self.evaluator = evaluator
        self.fingerprint = fingerprint
        if not distiller.ready:
            raise ConfigError(
                "the distiller has adapters or loss modules not built yet",
                hint="call distiller.check(batch) with one real batch before making the Trainer: "
                "their shapes come from the tensors the models produce",
            )
        self.device = select_device(self.spec.device)
        self.amp = amp_dtype(self.spec.amp, self.device)
        self.distiller = distiller.to(self.device)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.main = self.rank == 0
        self.callbacks = CallbackList([*build_callbacks(self.spec), *callbacks], self.main)
        # compiled in place before DDP wraps it (torch's recommended order); parameter names,
        # checkpoints, evaluation and export stay those of the eager modules
        self.compiled = CompiledStep(distiller, self.spec.compile_spec, distiller.trainable())
        self._model: nn.Module = self._data_parallel(distiller) if self.distributed else distiller
        # a momentum teacher: averaged from the underlying student (DDP's copy is the same one)
        teacher = distiller.teacher
        self._ema = teacher if isinstance(teacher, EMATeacher) else None
        if self._ema is not None and int(self._ema.updates) == 0:
            # after DDP has given every rank rank 0's weights, and after distiller.check()
            # built any lazy module: the copy starts equal to the student that trains
            self._ema.restart(distiller.student.model)
        self._params = [p for p in distiller.trainable().parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self._params, self.spec.optimizer)
        # fp16 needs loss scaling against underflow; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # batches of the current epoch done (resumed mid-epoch)
        self._epoch_loss = (0.0, 0)  # loss sum and steps of the current epoch, for resuming
        # train.prequential: each batch scored by the trained models before they learn from it
        self._prequential = Prequential(self.device, self.amp) if self.spec.prequential else None
        self._metrics_file: AppendLog | None = None
        self._epoch_record: dict[str, Any] = {}  # the last epoch's log record, for callbacks
        self._finite: torch.Tensor | None = None  # CUDA: all losses finite since the last check
        self._checked_step = 0
        self._compile_logged = False  # whether metrics.jsonl has the compile fallback

    def _data_parallel(self, distiller: Distiller) -> nn.Module:
        """DDP over the student, adapters and loss modules; the frozen teacher left out."""
        teacher = distiller.teacher
        ignored = (
            [f"teacher.{n}" for n, _ in [*teacher.named_parameters(), *teacher.named_buffers()]]
            if teacher is not None
            else []
        )
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(distiller, ignored)
        return DistributedDataParallel(
            distiller,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            # a loss may leave a trainable module unused in a step (e.g. a head no loss reads)
            find_unused_parameters=True,
        )

    # ------------------------------------------------------------------ one step

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Forward, backward, clip, optimizer step; returns the detached loss terms. With
        ``train.prequential`` the batch is first scored by the models it is about to train."""
        batch = to_device(batch, self.device, non_blocking=self.device.type == "cuda")
        if self._prequential is not None:
            self._prequential.score(self.distiller.models(), batch)
        # train.compile: forward and backward compiled; on a compiler failure redone eagerly
        total, terms = self.compiled.run(
            lambda: self._forward_backward(batch, teacher_apart=True),
            lambda: self._forward_backward(batch),
        )
        if self.spec.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self._params, self.spec.grad_clip)
        scale = self._loss_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        if self._ema is not None:
            # the scaler lowers its scale exactly when it skipped the step (inf/NaN gradients)
            skipped = None if scale is None else self._loss_scale() < scale
            self._ema.update(self.distiller.student.model, skipped)
        if self.compiled.fallback_cause is not None and not self._compile_logged:
            self._log_compile()  # the step that fell back to eager, in metrics.jsonl
        return {"loss": total.detach(), **{k: v.detach() for k, v in terms.items()}}

    def _loss_scale(self) -> torch.Tensor | None:
        """fp16's loss scale now, a tensor on the device (a copy: the scaler updates its own
        in place), so that comparing it never waits for the GPU; None without loss scaling."""
        if self._ema is None or not self.scaler.is_enabled():
            return None
        # private, but the public get_scale() is a float: a host sync every step
        return self.scaler._get_scale_async().clone()  # type: ignore[union-attr]

    def _forward_backward(
        self, batch: Mapping[str, Any], teacher_apart: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss terms and their gradients. ``teacher_apart``: the teacher runs first, on its
        own, and the model reads its Knowledge from the batch (as from a store), so that a
        compiled Distiller holds only the student, adapters and losses."""
        with autocast(self.device, self.amp):
            inputs = self._with_teacher_knowledge(batch) if teacher_apart else batch
            _, terms = self._model(inputs)
            total = sum(terms.values())
        finite = torch.isfinite(total.detach())
        if self.device.type == "cuda":
            # Reading a CUDA value on the host waits for the GPU; fold the check into a device
            # flag that check_finite() reads at log steps and before every checkpoint.
            self._finite = finite if self._finite is None else self._finite & finite
        elif not finite:
            self._non_finite(terms, batch=batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        return total, terms

    def _with_teacher_knowledge(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        distiller = self.distiller
        if "knowledge" in batch or not distiller.uses_teacher or distiller.teacher is None:
            return batch
        with torch.no_grad():
            knowledge = distiller.teacher(batch["views"][distiller.teacher.view])
        return {**batch, "knowledge": knowledge}

    def check_finite(self, terms: Mapping[str, torch.Tensor]) -> None:
        """Raise if a loss became NaN/Inf since the last check (CUDA checks lazily)."""
        if self._finite is not None and not bool(self._finite):
            self._non_finite(terms, since=self._checked_step)
        self._finite, self._checked_step = None, self.step

    def _non_finite(
        self,
        terms: Mapping[str, torch.Tensor],
        since: int | None = None,
        batch: Mapping[str, Any] | None = None,
    ) -> None:
        bad = [k for k, v in terms.items() if not torch.isfinite(v)]
        what = f"loss terms {bad}" if bad else "a loss term"
        # steps are counted from 1: the failing step is the one after the last completed
        failing = self.step + 1 if since is None else self.step
        when = f"step {failing}" if since is None else f"steps {since + 1}..{self.step}"
        causes = self._non_finite_causes(bad or list(terms), batch)
        if causes:
            cause = "; ".join(causes)
            hint = "clean the data of NaN/Inf, or fix the weights named"
        elif failing == 1:  # no optimizer step yet: the learning rate cannot be the cause
            cause = (
                "no optimizer step had been taken (so not the learning rate), and the inputs, "
                "loss weights and teacher outputs were finite: the student's outputs or the "
                "loss itself made it"
                if batch is not None
                else "no optimizer step had been taken (so not the learning rate)"
            )
            hint = "check the loss's parameters (a temperature of 0, say) and the student's inputs"
        else:
            cause, hint = "", "lower train.optimizer.lr, set train.grad_clip, or check the inputs"
        found = ckpt.list_checkpoints(self.run.checkpoints) if self.run else []
        last = found[-1] if found else None
        self._log(
            {
                "kind": "error",
                "epoch": self.epoch,
                "step": failing,
                "error": f"{what} became NaN/Inf",
            }
        )
        raise NonFiniteLossError(
            f"{what} became NaN/Inf at epoch {self.epoch + 1}, {when}"
            + (f": {cause}" if cause else "")
            + f"; training stopped. The last good checkpoint is {last or '(none yet)'}",
            hint=hint,
        )

    def _non_finite_causes(self, names: list[str], batch: Mapping[str, Any] | None) -> list[str]:
        """What made ``names`` non-finite, among what is cheap to look at: their loss weights,
        the batch's inputs, and the teacher's Knowledge of it (stored, or run again: it is
        frozen, so it says now what it said in the step)."""
        causes = [
            f"the weight of {name!r} is {self.distiller.weights[name]}"
            for name in names
            if not math.isfinite(self.distiller.weights.get(name, 0.0))
        ]
        if batch is None:  # CUDA checks lazily, after the batch is gone
            return causes
        for side, x in batch.get("views", {}).items():
            if _has_non_finite(x):
                causes.append(f"the {side}'s inputs in this batch hold NaN/Inf")
        stored = batch.get("knowledge")
        if stored is not None:
            causes += [
                f"the teacher's stored {key!r} in this batch holds NaN/Inf"
                for key, value in stored.items()
                if _has_non_finite(value)
            ]
        elif self.distiller.uses_teacher and self.distiller.teacher is not None:
            with torch.no_grad(), autocast(self.device, self.amp):
                knowledge = self.distiller.teacher(batch["views"][self.distiller.teacher.view])
            causes += [
                f"the teacher's {key!r} on this batch holds NaN/Inf (its weights or inputs)"
                for key, value in knowledge.items()
                if _has_non_finite(value)
            ]
        return causes

    # ------------------------------------------------------------------ the loop

    def fit(
        self,
        train_loader: Any,
        eval_loader: Any = None,
        resume: bool = False,
        test_loader: Any = None,
    ) -> History:
        """Train for ``spec.epochs`` epochs (continuing from the last checkpoint if ``resume``).

        ``eval_loader`` is evaluated as ``eval.every_epochs`` says (callbacks' ``on_eval`` see
        it); ``test_loader`` once, after the last epoch's checkpoint (``History.test``): the
        validation split selects, the test split is only reported. Under DDP every rank calls
        it with its own shard of the training data; only rank 0 evaluates.
        """
        steps_per_epoch = len(train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, self.spec.schedule, steps_per_epoch, self.spec.epochs),
        )
        history = History()
        if not self.main:
            eval_loader = test_loader = None
        if self.run is not None and self.main:
            self.run.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            self._metrics_file = AppendLog(self.run.metrics_file, "the metrics log")
        failed = True
        try:
            if resume:
                self.resume()
            if self.distiller.adapter_choices and self.step == 0:
                # the adapters `auto` chose, for the log and the report
                self._log({"kind": "adapters", **self.distiller.adapter_choices})
            if self.compiled.spec is not None:
                self._log_compile()
            self._callback("on_start")
            while self.epoch < self.spec.epochs:
                history.train_loss.append(self._train_epoch(train_loader, steps_per_epoch))
                epoch_record = self._epoch_record
                self.epoch += 1
                last = self.epoch == self.spec.epochs
                every = self.eval_spec.every_epochs
                scalars = None
                if eval_loader is not None and (last or (every and self.epoch % every == 0)):
                    try:
                        history.eval.append(self._evaluate_and_log(eval_loader))
                    except BaseException:
                        self.save()  # an evaluation that fails loses no training: --resume
                        raise
                    scalars = _scalars(history.eval[-1])
                # after evaluating, as the RNG state then is what the next epoch starts from
                path = self.save()
                # callbacks after the checkpoint: one that fails leaves it to resume from
                self._callback("on_epoch", self.epoch, epoch_record)
                if scalars is not None:
                    self._callback("on_eval", self.epoch, scalars)
                if path is not None:
                    self._callback("on_checkpoint", path)
            if eval_loader is not None and not history.eval:  # resumed a finished run
                history.eval.append(self._evaluate_and_log(eval_loader))
                self._callback("on_eval", self.epoch, _scalars(history.eval[-1]))
            if test_loader is not None:
                history.test = self._evaluate_and_log(test_loader, test=True)
            self._callback("on_end", history)
            failed = False
        finally:
            try:
                self.callbacks.close(self, failing=failed)
            finally:
                self._close_metrics()
        return history

    def _close_metrics(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None

    def _train_epoch(self, loader: Any, steps_per_epoch: int) -> float:
        # crossdistill's loaders move sampler and dataset on together; a plain DataLoader may
        # still hold a sampler (DistributedSampler) or dataset with its own set_epoch
        parts = (
            [loader]
            if hasattr(loader, "set_epoch")
            else [getattr(loader, "sampler", None), getattr(loader, "dataset", None)]
        )
        for obj in parts:
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(self.epoch)
        first = self.batch_in_epoch  # > 0: resumed mid-epoch, those batches are done
        if first:
            sampler = getattr(loader, "sampler", None)
            if not hasattr(sampler, "skip"):
                raise CheckpointError(
                    "this checkpoint was taken mid-epoch, and the training loader cannot skip "
                    "the batches already done",
                    hint="use crossdistill's example_loader (its EpochSampler can)",
                )
            sampler.skip(first * loader.batch_size)
        self.distiller.train()
        start, running, seen = time.perf_counter(), 0.0, 0
        terms: dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros((), device=self.device)  # summed on device: no per-step sync
        every = self.spec.checkpoint_every_steps
        total = max(1, steps_per_epoch * self.spec.epochs)
        with ProgressBar(
            self.spec.progress and self.main,
            f"epoch {self.epoch + 1}/{self.spec.epochs}",
            steps_per_epoch - first,
            show_loss=True,
        ) as bar:
            for i, batch in enumerate(loader, start=first):
                # annealed losses: from the step alone, so a resumed run sets the same values
                self.distiller.set_progress(self.step / total)
                terms = self.train_step(batch)
                loss_sum += terms["loss"]
                seen += 1
                if i % self.spec.log_every == 0 or i == steps_per_epoch - 1:
                    self.check_finite(terms)
                    values = {k: float(v) for k, v in terms.items()}
                    running = values["loss"]
                    record = self._log(
                        {
                            "kind": "step",
                            "epoch": self.epoch,
                            "step": self.step,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            **values,
                            **self.distiller.scheduled_values,
                        }
                    )
                    self._callback("on_step", self.step, record)
                bar.advance(loss=running)
                if every and self.step % every == 0 and i + 1 < steps_per_epoch:
                    self.check_finite(terms)
                    prior_sum, prior_seen = self._epoch_loss
                    self.batch_in_epoch = i + 1
                    self._epoch_loss = (prior_sum + float(loss_sum), prior_seen + seen)
                    loss_sum.zero_()
                    seen = 0
                    path = self.save()
                    if path is not None:
                        self._callback("on_checkpoint", path)
        self.check_finite(terms)  # never checkpoint weights a NaN has reached
        mean_loss = self._mean_over_ranks(
            self._epoch_loss[0] + float(loss_sum), self._epoch_loss[1] + seen
        )
        self.batch_in_epoch, self._epoch_loss = 0, (0.0, 0)
        seconds = time.perf_counter() - start
        self._epoch_record = self._log(
            {
                "kind": "epoch",
                "epoch": self.epoch + 1,
                "step": self.step,
                "train_loss": mean_loss,
                "seconds": seconds,
                "steps_per_s": (steps_per_epoch - first) / max(seconds, 1e-9),
                **(
                    self._prequential.epoch_metrics(self._sum_over_ranks)
                    if self._prequential
                    else {}
                ),
            }
        )
        return mean_loss

    def _sum_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(x)
        return x

    def _pair_over_ranks(self, total: float, count: int) -> tuple[float, int]:
        """A running sum and its count, summed over the ranks."""
        if self.distributed:
            both = torch.tensor([total, float(count)], dtype=torch.float64)
            dist.all_reduce(both)
            total, count = float(both[0]), int(both[1])
        return total, count

    def _mean_over_ranks(self, total: float, count: int) -> float:
        total, count = self._pair_over_ranks(total, count)
        return total / max(count, 1)

    def _evaluate_and_log(self, loader: Any, test: bool = False) -> dict[str, Any]:
        metrics = self.evaluate(loader)
        # the log keeps the numbers; tables (per-class scores) go to eval.json
        scalars = _scalars(metrics)
        # the test split's one evaluation is a record of its own kind: per-epoch curves and
        # selection read the "eval" records only
        kind = "test" if test else "eval"
        split = {"split": self.splits[test]} if self.splits else {}
        self._log({"kind": kind, "epoch": self.epoch, "step": self.step, **split, **scalars})
        return metrics

    def evaluate(self, loader: Any) -> dict[str, float]:
        """The evaluator's metrics (by default accuracy, top-k, calibration, and agreement with
        the teacher when there is one); each peer's under ``<peer>/``."""
        metrics = {}
        for side, model in self.distiller.models().items():
            found = self.evaluator(
                model,
                loader if side == "student" else SideBatches(loader, side),
                self.distiller.teacher,
                self.device,
                self.amp,
                self.eval_spec.topk,
            )
            prefix = "" if side == "student" else f"{side}/"
            metrics.update({prefix + key: value for key, value in found.items()})
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path | None:
        """Checkpoint (on rank 0; every rank takes part, giving its RNG state): at the end of
        an epoch ``epoch-NNNN``, mid-epoch ``epoch-NNNN-step-SSSSSSSS`` (NNNN epochs done)."""
        rng = ckpt.rng_state()
        if self.distributed:
            states: list[Any] = [None] * self.world
            dist.all_gather_object(states, {k: v.cpu() for k, v in rng.items()})
            rng = {f"rank{r}.{k}": v for r, state in enumerate(states) for k, v in state.items()}
        # the epoch's running sums, over every rank (a collective: before rank 0 goes on alone);
        # a resume gives them to rank 0, the other ranks start from nothing
        loss_sum, seen = self._pair_over_ranks(*self._epoch_loss)
        prequential = self._prequential.state(self._sum_over_ranks) if self._prequential else None
        if self.run is None or not self.main:
            return None
        name = f"epoch-{self.epoch:04d}"
        if self.batch_in_epoch:
            name += f"-step-{self.step:08d}"
        path = ckpt.save_checkpoint(
            self.run.checkpoints / name,
            trainable=self.distiller.trainable().state_dict(),
            optimizer=self.optimizer.state_dict(),
            rng=rng,
            teacher=self._ema.state_dict() if self._ema is not None else None,
            state={
                "epoch": self.epoch,
                "step": self.step,
                "batch_in_epoch": self.batch_in_epoch,
                "epoch_loss": [loss_sum, seen],
                **({"prequential": prequential} if prequential is not None else {}),
                "world_size": self.world,
                "fingerprint": self.fingerprint,
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict(),
            },
        )
        ckpt.prune_checkpoints(self.run.checkpoints, self.spec.keep_checkpoints)
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint of the run; False when there is none yet."""
        found = ckpt.list_checkpoints(self.run.checkpoints) if self.run else []
        if not found:
            return False
        state = ckpt.load_checkpoint(found[-1])
        if self.fingerprint and state.get("fingerprint") not in ("", self.fingerprint):
            raise CheckpointError(
                f"{found[-1]} was written by a different recipe (fingerprint "
                f"{state.get('fingerprint')} vs {self.fingerprint})",
                hint="resume with the recipe and overrides the run started with, or give the "
                "new run another name",
            )
        if state.get("world_size", 1) != self.world:
            raise CheckpointError(
                f"{found[-1]} was written by {state.get('world_size', 1)} processes, and this "
                f"run has {self.world}",
                hint=f"resume with --nproc {state.get('world_size', 1)}: the data order and "
                "every rank's random state depend on it",
            )
        if self._ema is not None and "teacher" not in state:
            raise CheckpointError(
                f"{found[-1]} holds no momentum teacher, and this run's teacher is one",
                hint="resume with the recipe the run started with",
            )
        try:
            self.distiller.trainable().load_state_dict(state["trainable"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self._ema is not None:
                self._ema.load_state_dict(state["teacher"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{found[-1]} does not fit this model: {exc}") from None
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if self.distributed:
            prefix = f"rank{self.rank}."
            rng = {k.removeprefix(prefix): v for k, v in rng.items() if k.startswith(prefix)}
        ckpt.restore_rng(rng)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        # the epoch's sums so far are every rank's together: rank 0 carries them
        loss_sum, seen = state.get("epoch_loss", (0.0, 0)) if self.main else (0.0, 0)
        self._epoch_loss = (float(loss_sum), int(seen))
        if self._prequential is not None:
            self._prequential.load(state.get("prequential", {}) if self.main else {})
        self._log(
            {"kind": "resume", "epoch": self.epoch, "step": self.step, "checkpoint": str(found[-1])}
        )
        return True

    def _log_compile(self) -> None:
        """A ``compile`` record: the backend, whether steps run compiled, and why not."""
        assert self.compiled.spec is not None
        cause = self.compiled.fallback_cause
        self._compile_logged = cause is not None
        self._log(
            {
                "kind": "compile",
                "epoch": self.epoch,
                "step": self.step,
                "backend": self.compiled.spec.backend,
                "compiled": self.compiled.active,
                **({"fallback": cause} if cause is not None else {}),
            }
        )

    def _log(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {"time": time.time(), **record}
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps(record) + "\n")
        return record

    def _callback(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every callback; a failure is logged to metrics.jsonl and raised."""
        if not self.callbacks:
            return
        try:
            self.callbacks.call(hook, self, *args)
        except CallbackError as exc:
            self._log(
                {"kind": "error", "epoch": self.epoch, "step": self.step, "error": exc.message}
            )
            raise


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """An evaluation's numbers, without its tables (per-class scores)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def _has_non_finite(x: Any) -> bool:
    """Whether a tensor (or a dict of them, a view of several fields) holds NaN/Inf."""
    if isinstance(x, Mapping):
        return any(_has_non_finite(v) for v in x.values())
    return (
        isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all())
    )
