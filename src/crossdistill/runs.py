"""The Run: one run directory and everything one experiment leaves in it.

A run directory holds::

    config.yaml            the resolved recipe (what the run was made by)
    run.lock               locked while a process writes the run (its PID inside)
    metrics.jsonl          every loss term per logged step, every evaluation
    checkpoints/           epoch-NNNN/ (see crossdistill.train.checkpoint)
    student.safetensors    the student alone, at the end
    student.json           how to rebuild it: model, params, outputs, pipeline, size, SHA-256
    eval.json              the final evaluation ({"epoch": N, "split": NAME, metric: value}; the
                           test split's, with the last validation under "validation")
    eval-<name>.json       later evaluations (``crossdistill eval``)
    bench.json, report.html, tensorboard/, mlflow/, export/<format>/, data/

This module is the only one that knows those names: every command that takes a run takes a
:class:`Run`. The files a run finishes with are written atomically, so an interrupted run never
looks finished.

A run folder is data, not code: ``student.json`` is validated against a schema and the student's
SHA-256, and what the run's files name (its student, teacher, data source, pipeline steps) is
built under :func:`crossdistill.registry.untrusted`: by registered name, or by an import path
only inside the packages the user allows (``Run(path, allow_import=["my_pkg"])``,
``--allow-import my_pkg``). A recipe's ``imports:`` is not followed when a run is reopened; pass
``--import`` for plug-ins.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
import torch
from safetensors.torch import save
from torch import nn

from crossdistill._util.files import empty_dir, write_atomic, write_errors, write_json
from crossdistill._util.hashing import sha256_file
from crossdistill._util.validation import format_validation_error
from crossdistill.build import build_eval_loader, build_teacher, build_wrapper, trained_spec
from crossdistill.config import (
    ModelSpec,
    OutputSpec,
    PluginSpec,
    Recipe,
    dump_recipe,
    load_recipe,
    read_yaml,
)
from crossdistill.core.distiller import Distiller
from crossdistill.core.wrappers import Student, Teacher
from crossdistill.data import Split, load_source
from crossdistill.errors import CheckpointError, ConfigError, UnknownNameError, WriteError
from crossdistill.registry import untrusted
from crossdistill.train import checkpoint as ckpt

if TYPE_CHECKING:
    from crossdistill.train.trainer import History


class RunLockedError(CheckpointError):
    """Another process is writing the run directory."""


class StudentMeta(pydantic.BaseModel):
    """The schema of student.json (:meth:`Run.finish` writes it): the student's model (a
    registered name or an import path; None for a module built in Python, then ``class`` names
    it), its params, outputs and pipeline, its parameter count and the SHA-256 of
    student.safetensors."""

    model_config = pydantic.ConfigDict(
        extra="forbid", strict=True, populate_by_name=True, protected_namespaces=()
    )

    model: str | None
    class_: str | None = pydantic.Field(None, alias="class")
    params: dict[str, Any] = pydantic.Field(default_factory=dict)
    outputs: list[str] | dict[str, str] = pydantic.Field(default_factory=lambda: ["logits"])
    pipeline: list[PluginSpec] = pydantic.Field(default_factory=list)
    parameters: pydantic.NonNegativeInt | None = None
    sha256: str = pydantic.Field(pattern=r"^[0-9a-f]{64}$")


class Run:
    """One run directory (see the module docstring for its layout).

    ``allow_import``: packages whose code the run's files may name by import path (a student
    ``my_pkg.nets:make_net`` needs ``["my_pkg"]``); without it only registered names build.
    """

    def __init__(self, path: str | os.PathLike[str], allow_import: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.allow_import = _names(allow_import)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ layout

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def lock_file(self) -> Path:
        return self.path / "run.lock"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def student_file(self) -> Path:
        return self.path / "student.safetensors"

    @property
    def student_json(self) -> Path:
        return self.path / "student.json"

    @property
    def bench_file(self) -> Path:
        return self.path / "bench.json"

    @property
    def report_file(self) -> Path:
        return self.path / "report.html"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def mlflow_dir(self) -> Path:
        """The MLflow store of the ``mlflow`` logger (train.loggers)."""
        return self.path / "mlflow"

    @property
    def data_dir(self) -> Path:
        """Data kept with the run (the evaluation split of a run trained from Python)."""
        return self.path / "data"

    @property
    def exports(self) -> Path:
        return self.path / "export"

    def eval_file(self, name: str | None = None) -> Path:
        """``eval.json`` (training's last evaluation), or ``eval-<name>.json``."""
        return self.path / ("eval.json" if name is None else f"eval-{name}.json")

    def export_dir(self, fmt: str, int8: bool = False, half: bool = False) -> Path:
        """Where an export lands by default: ``export/<format>[-int8][-fp16]``."""
        return self.exports / (fmt + ("-int8" if int8 else "") + ("-fp16" if half else ""))

    # ------------------------------------------------------------------ state

    @property
    def exists(self) -> bool:
        """Whether the folder is a run (it has a config.yaml)."""
        return self.config_file.is_file()

    @property
    def finished(self) -> bool:
        """Whether training ended: the student and how to rebuild it are there."""
        return self.student_file.is_file() and self.student_json.is_file()

    def checkpoint_list(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return ckpt.list_checkpoints(self.checkpoints)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | Run,
        finished: bool = True,
        allow_import: Iterable[str] = (),
    ) -> Run:
        """The run at ``path``; a clear error when it is not a run, or (``finished``) when its
        training has not ended. ``allow_import``: as for :class:`Run` (added to a given Run's)."""
        run = _with_allowed(path if isinstance(path, Run) else cls(path), allow_import)
        if not run.exists:
            inner = _runs_inside(run.path)
            raise CheckpointError(
                f"{run.path} is not a run directory (no config.yaml)",
                hint=f"it holds several runs ({', '.join(p.name for p in inner)}): pass one, "
                f"e.g. {inner[-1]}"
                if inner
                else "pass the folder that `crossdistill run` printed",
            )
        if finished and not run.finished:
            missing = [p.name for p in (run.student_file, run.student_json) if not p.is_file()]
            found = run.checkpoint_list()
            if found:
                raise CheckpointError(
                    f"{run.path} has no {' / '.join(missing)}: the run has not finished "
                    f"(its last checkpoint is {found[-1].name})",
                    hint=f"finish it with `crossdistill run {run.config_file} --resume`",
                )
            raise CheckpointError(
                f"{run.path} has neither {' / '.join(missing)} nor a checkpoint: the run has "
                "not finished",
                hint=f"train it with `crossdistill run {run.config_file}`",
            )
        return run

    # ------------------------------------------------------------------ contents

    def recipe(self, overrides: list[str] | None = None) -> Recipe:
        """The recipe the run was made by (its config.yaml), with ``overrides``."""
        if _predates_limit_mode(self.config_file):
            # written when data.limit_train always took the first N (the default is now a
            # random subset): read as what it trained on, so a resume is checked against that
            overrides = ["data.limit_mode=first", *(overrides or [])]
        return load_recipe(self.config_file, overrides)

    @functools.cached_property
    def config(self) -> Recipe:
        return self.recipe()

    def _rewrite_hint(self) -> str:
        return (
            "rewrite it from the last checkpoint: delete student.safetensors, then "
            f"`crossdistill run {self.config_file} --resume`"
        )

    def student_meta(self) -> dict[str, Any]:
        """student.json (validated by :class:`StudentMeta`): how to rebuild the student."""
        if not self.finished:
            Run.open(self)  # says why: not a run, or not finished
        try:
            meta = StudentMeta.model_validate_json(self.student_json.read_bytes())
        except OSError as exc:
            raise CheckpointError(
                f"{self.student_json} cannot be read: {exc}", hint=self._rewrite_hint()
            ) from None
        except pydantic.ValidationError as exc:
            raise CheckpointError(
                f"{self.student_json} does not describe a student:\n"
                + format_validation_error(exc, model=StudentMeta),
                hint=self._rewrite_hint(),
            ) from None
        return meta.model_dump(mode="json", by_alias=True)

    def student(self) -> Student:
        """The trained student, with its input pipeline (its weights' SHA-256 checked). What
        student.json names is built by registered name, or by an import path inside
        ``allow_import``."""
        meta = self._checked_meta()
        with self._plugins(), untrusted(self.student_json, self.allow_import):
            described = ModelSpec(
                model=meta["model"],
                params=meta["params"],
                outputs=meta["outputs"],
                pipeline=meta["pipeline"],
            )
            spec = trained_spec(described, self.student_file)
            return build_wrapper(Student, spec, "student")  # type: ignore[return-value]

    def trained_student(self, spec: ModelSpec) -> Student:
        """The trained student built from ``spec``, the student of the recipe that trained
        this run — a recipe is the user's own, so its import paths need no ``allow_import``
        (as when it trained) — holding this run's weights (their SHA-256 checked). What runs
        made from a recipe (generations, continual tasks) read their students with."""
        self._checked_meta()
        return build_wrapper(Student, trained_spec(spec, self.student_file), "student")  # type: ignore[return-value]

    def _checked_meta(self) -> dict[str, Any]:
        """student.json, once the student it describes is rebuildable and its weights are
        those it describes."""
        meta = self.student_meta()
        if meta["model"] is None:
            raise CheckpointError(
                f"the student of {self.path} (a {meta.get('class', 'module')}) was built in "
                "Python, and crossdistill cannot rebuild it: only its weights are kept",
                hint=f"build it yourself and load {self.student_file} with "
                "safetensors.torch.load_file; to make runs rebuildable, build students with "
                "crossdistill.build_model(NAME or 'package.module:Callable', params)",
            )
        if sha256_file(self.student_file) != meta["sha256"]:
            raise CheckpointError(
                f"{self.student_file} is corrupted: its SHA-256 differs from the one in "
                "student.json",
                hint=self._rewrite_hint(),
            )
        return meta

    def teacher(self) -> Teacher | None:
        """The run's teacher, as its recipe names it (None when it has none). A momentum
        teacher is the student's model holding the average of the run's last checkpoint (None
        when the run kept no checkpoint: the average lives nowhere else)."""
        spec = self.config.teacher
        if spec is None:
            return None
        if spec.ema_of:
            found = self.checkpoint_list()
            state = ckpt.load_checkpoint(found[-1]).get("teacher") if found else None
            if state is None:
                return None
            teacher = build_teacher(spec, self.student())
            assert teacher is not None
            teacher.load_state_dict(state)
            return teacher
        with self._plugins(), untrusted(self.config_file, self.allow_import):
            return build_teacher(spec)

    def eval_data(
        self, split: str | None = None, limit: int | None = None, device: Any = "cpu"
    ) -> Any:
        """A loader over the recipe's evaluation split (or ``split``), unaugmented, in order,
        at most ``limit`` examples."""
        overrides = ["data.num_workers=0"]
        overrides += [f"data.eval_split={json.dumps(split)}"] if split else []
        overrides += [f"data.limit_eval={limit}"] if limit else []
        with self._plugins(), untrusted(self.config_file, self.allow_import):
            return build_eval_loader(self.recipe(overrides), torch.device(device))

    def split(self, name: str | None = None) -> Split:
        """Split ``name`` (default: the evaluation split) of the recipe's data source."""
        data = self.config.data
        with self._plugins(), untrusted(self.config_file, self.allow_import):
            return load_source(data.source, name or data.eval_split, **data.params)

    def final_metrics(self) -> dict[str, Any]:
        """eval.json: training's last evaluation (empty when the run has none)."""
        try:
            data = json.loads(self.eval_file().read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_eval(self, name: str | None, result: dict[str, Any]) -> Path:
        """Write an evaluation result as ``eval[-<name>].json``, atomically."""
        path = self.eval_file(name)
        write_json(path, result, indent=2)
        return path

    @contextlib.contextmanager
    def _plugins(self) -> Iterator[None]:
        """Name the modules the recipe imports when one of its plug-ins is missing."""
        try:
            yield
        except UnknownNameError as exc:
            imports = self.config.imports if self.exists else []
            if not imports:
                raise
            flags = " ".join(f"--import {m}" for m in imports)
            raise UnknownNameError(
                exc.message,
                hint=f"this run's recipe imports {imports}; crossdistill never imports code a "
                f"run folder names: pass `crossdistill {flags} ...` (or import them in Python)",
            ) from None

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writing(
        self, recipe: Recipe, resume: bool = False, overwrite: bool = False
    ) -> Iterator[Run]:
        """Hold the run for writing: create it (or check that ``resume`` may continue it, or
        empty it when ``overwrite``), lock it against other processes, write config.yaml; the
        lock is released at the end.

        Refused: a run that exists when neither resuming nor overwriting, a finished run
        without a checkpoint, a run started by a different recipe, a run another process holds.

        A run that fails before its first checkpoint in a folder that was new, empty or
        overwritten leaves the folder as it was (nothing in it could be resumed, and it would
        refuse a rerun as "already exists"); a used folder is left alone, and so is what an
        interruption (Ctrl-C, a BaseException) leaves: ``--resume`` goes on from there.
        """
        if resume and overwrite:
            raise ConfigError("a run is either resumed or overwritten, not both")
        if self.path.is_dir() and not overwrite:  # refused before the folder is touched
            self._check_writable(recipe, resume)
        with write_errors(self.path, "the run folder"):
            try:  # one atomic mkdir: of two processes starting at once, one creates the folder
                self.path.mkdir(parents=True)
                created = True
            except FileExistsError:
                created = False
            lock = _Lock(self.lock_file)  # locked by another process: its folder, left alone
            was_empty = not created and not self._written()
            try:
                if overwrite:  # under the lock: a run another process writes is left alone
                    empty_dir(self.path, keep=(self.lock_file.name,))
                self._check_writable(recipe, resume)
                dump_recipe(recipe, self.config_file)
            except BaseException:
                if created and not self._written():  # leave nothing behind that looks like a run
                    shutil.rmtree(self.path, ignore_errors=True)
                lock.release()
                raise
        try:
            yield self
        except Exception as exc:
            if (created or was_empty or overwrite) and not self.checkpoint_list():
                shutil.rmtree(self.path, ignore_errors=True)  # the lock file too: release allows it
                if was_empty:
                    self.path.mkdir(exist_ok=True)
            if isinstance(exc, WriteError):  # a full disk mid-run: the checkpoints so far are kept
                raise exc.with_next_step(
                    f"continue with `crossdistill run {self.config_file} --resume`"
                ) from exc
            raise
        finally:
            lock.release()

    def _written(self) -> bool:
        """Whether the folder holds anything but the lock (a run another process wrote)."""
        return any(p.name != self.lock_file.name for p in self.path.iterdir())

    def _check_writable(self, recipe: Recipe, resume: bool) -> None:
        others = [p for p in self.path.iterdir() if p.name != self.lock_file.name]
        if others and not resume:
            raise ConfigError(
                f"run directory {self.path} already exists",
                hint="pass --resume to continue it, --overwrite to replace it, or --name NEW to "
                "start another run",
            )
        if resume and self.student_file.exists() and not self.checkpoint_list():
            raise ConfigError(f"{self.path} is a finished run with no checkpoint to resume from")
        if resume and self.exists:
            before = self.recipe().fingerprint()
            if before != recipe.fingerprint():
                # refused before anything is written: config.yaml must keep describing the run
                raise CheckpointError(
                    f"{self.path} was started by a different recipe (fingerprint {before} vs "
                    f"{recipe.fingerprint()})",
                    hint="resume with the recipe and overrides the run started with, or give "
                    "the new run another name",
                )

    def finish(
        self,
        distiller: Distiller,
        spec: ModelSpec | None,
        metrics: dict[str, Any],
        epochs: int,
    ) -> None:
        """Write the student alone (safetensors + how to rebuild it) and the final metrics,
        each atomically; student.json last, since it is what makes the run finished.

        ``spec`` None: a student crossdistill cannot rebuild (a module built in Python); its
        weights are kept, and student.json says so."""
        self._write_model(distiller.student.model, spec, metrics, epochs)

    def peer(self, name: str) -> Run:
        """The run of peer ``name`` (``peers/<name>``): written by :meth:`finish_peers`."""
        return Run(self.path / "peers" / name, self.allow_import)

    def finish_peers(
        self,
        distiller: Distiller,
        recipe: Recipe,
        metrics: dict[str, Any],
        epochs: int,
        specs: Mapping[str, ModelSpec | None] | None = None,
    ) -> None:
        """Write each peer of a finished run as a run of its own, ``peers/<name>/``: its model
        as that run's student, its metrics (``<name>/...`` in ``metrics``) as its eval.json, and
        as config.yaml the recipe with the peer and the student swapping names
        (:meth:`Recipe.with_student`), so that eval, export and report take a peer as they take
        any run's student. ``specs``: how to rebuild each peer (None: it cannot be; default:
        the recipe's ``peers``)."""
        specs = recipe.peers if specs is None else specs
        peers = dict(distiller.peers or {})
        # the log of the joint training, read once: each peer's has its own evaluations
        text = self.metrics_file.read_text() if peers else ""
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        for name, peer in peers.items():
            run = self.peer(name)
            with write_errors(run.path, f"the run folder of peer {name!r}"):
                run.path.mkdir(parents=True, exist_ok=True)
            swapped = recipe.with_student(name).model_copy(
                update={"name": name, "output": OutputSpec(dir=run.path.parent)}
            )
            dump_recipe(swapped, run.config_file)
            lines = [
                json.dumps(_of_peer(r, name) if r.get("kind") in ("eval", "test") else r)
                for r in records
            ]
            write_atomic(run.metrics_file, "".join(f"{line}\n" for line in lines), what="the log")
            run._write_model(peer.model, specs[name], _of_peer(metrics, name), epochs)

    def _write_model(
        self, model: nn.Module, spec: ModelSpec | None, metrics: dict[str, Any], epochs: int
    ) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        # a finish that fails (a full disk) must not leave an earlier finish looking current
        with write_errors(self.student_json, "the student's description"):
            self.student_json.unlink(missing_ok=True)
        write_atomic(self.student_file, save(state), what="the student")
        fields = {"model", "params", "outputs", "pipeline"}
        meta = {
            **(
                spec.model_dump(mode="json", include=fields)
                if spec is not None
                else {"model": None, "class": _class_path(model)}
            ),
            "parameters": sum(p.numel() for p in model.parameters()),
            # Run.student() checks it: a flipped byte inside a tensor still parses
            "sha256": sha256_file(self.student_file),
        }
        write_json(self.eval_file(), {"epoch": epochs, **metrics}, what="the evaluation")
        write_json(self.student_json, meta, what="the student's description")


MULTI_RUN_RECIPE = "recipe.yaml"  # the recipe of a folder of several runs


def claim_multi_run_folder(
    folder: Path,
    recipe: Recipe,
    resume: bool,
    overwrite: bool,
    *,
    what: str,
    used: bool,
    same: Callable[[Recipe, Recipe], bool],
) -> None:
    """Make ``folder`` the folder of several runs of ``recipe`` (generations, a continual
    sequence; ``what`` names it in errors): new, emptied (``overwrite``), or when resuming, one
    whose ``recipe.yaml`` is ``same`` as this one. ``used``: whether it holds any of those runs
    yet (a folder left with only its recipe is new). The caller writes ``recipe.yaml``."""
    kept = folder / MULTI_RUN_RECIPE
    if used and overwrite:
        with write_errors(folder, f"the {what}' folder"):
            empty_dir(folder)
    elif used and not resume:
        raise ConfigError(
            f"run directory {folder} already exists",
            hint="pass --resume to continue it, --overwrite to replace it, or --name NEW to "
            "start another run",
        )
    elif used and Run(folder).exists:
        raise CheckpointError(
            f"{folder} holds one run (config.yaml), not {what}",
            hint="give this run another name (--name NEW), or replace it with --overwrite",
        )
    elif used and not kept.is_file():
        raise CheckpointError(
            f"{folder} is not a folder of {what} (no {MULTI_RUN_RECIPE})",
            hint="give this run another name (--name NEW), or replace it with --overwrite",
        )
    elif used and not same(load_recipe(kept), recipe):
        raise CheckpointError(
            f"{folder} holds {what} of a different recipe ({kept})",
            hint="resume with the recipe and overrides the run started with, or give the new "
            "run another name",
        )
    with write_errors(folder, f"the {what}' folder"):
        folder.mkdir(parents=True, exist_ok=True)


_RECORD_KEYS = ("time", "kind", "epoch", "step", "split")  # what an evaluation is, not a metric


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint of the run at ``folder``, or of the runs inside it (a
    folder of generations or continual tasks); None when there is none."""
    runs = [folder] if Run(folder).exists else _runs_inside(folder)
    found = [c for run in runs for c in Run(run).checkpoint_list()]
    return max(found, key=lambda c: c.stat().st_mtime_ns) if found else None


def _runs_inside(folder: Path) -> list[Path]:
    """The run folders directly inside ``folder`` (generations, continual tasks), in the order
    they were made (gen2 before gen10)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if Run(p).exists]
    return sorted(found, key=lambda p: (p.name.rstrip("0123456789"), len(p.name), p.name))


def _of_peer(metrics: dict[str, Any], name: str) -> dict[str, Any]:
    """The metrics of peer ``name`` (its ``<name>/`` keys, at every level), without prefix,
    with what says which evaluation they are (epoch, split, ...)."""
    prefix = f"{name}/"
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if key.startswith(prefix):
            out[key.removeprefix(prefix)] = value
        elif isinstance(value, dict) and key == "validation":
            out[key] = _of_peer(value, name)
        elif key in _RECORD_KEYS:
            out[key] = value
    return out


def final_metrics(history: History, splits: tuple[str, str]) -> dict[str, Any]:
    """What eval.json holds: the test split's evaluation after the last epoch, with the last
    validation evaluation under ``validation``; without a test evaluation, the last evaluation
    of training. ``split`` names the split the top-level numbers are on."""
    last = history.eval[-1] if history.eval else {}
    if not history.test:
        return {"split": splits[0], **last} if last else {}
    validation = {"validation": {"split": splits[0], **last}} if last else {}
    return {"split": splits[1], **history.test, **validation}


def _predates_limit_mode(config: Path) -> bool:
    """Whether ``config`` limits the training examples without saying how (a config.yaml of
    crossdistill 0.1, before ``data.limit_mode``)."""
    try:
        raw = read_yaml(config.read_text(), str(config))
    except (OSError, ConfigError):
        return False  # load_recipe names what is wrong
    data = raw.get("data") if isinstance(raw, dict) else None
    return isinstance(data, dict) and bool(data.get("limit_train")) and "limit_mode" not in data


def _class_path(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


class _Lock:
    """An exclusive ``flock`` on ``path``, which names the holder; released (and the file
    removed) by :meth:`release`, or by the kernel when the process dies, so a killed run never
    leaves a stale lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        while True:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(self.fd)
                os.close(self.fd)
                raise RunLockedError(
                    f"run directory {path.parent} is locked by {holder}: another "
                    "process is writing it",
                    hint="wait for that process to finish (or stop it); two processes must not "
                    "write one run",
                ) from None
            # the holder before us may have removed the file between our open and our lock:
            # then we hold a lock nobody else can see, and must lock the file anew
            try:
                if os.stat(path).st_ino == os.fstat(self.fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(self.fd)
        record = {
            "pid": os.getpid(),
            "command": " ".join(sys.argv)[:200],
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(record).encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                self.path.unlink()  # while still locked: nobody can take the old inode
            os.close(self.fd)
            self.fd = -1


def _read_holder(fd: int, wait_s: float = 2.0) -> str:
    """The holder's record, read from the locked file ``fd``. The holder writes it just after
    taking the lock, so an empty or partial record is waited for a moment before giving up."""
    deadline = time.monotonic() + wait_s
    while True:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        described = _holder(text)
        if described != _UNKNOWN_HOLDER or time.monotonic() >= deadline:
            return described
        time.sleep(0.02)


_UNKNOWN_HOLDER = "another process"


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"PID {info['pid']} ({info['command']}, since {info['since']})"
    except (ValueError, KeyError, TypeError):
        return _UNKNOWN_HOLDER


def load_student(path: str | os.PathLike[str] | Run, allow_import: Iterable[str] = ()) -> Student:
    """The trained student of the finished run at ``path``, with its input pipeline;
    ``allow_import``: the packages its student.json may name code of (see :class:`Run`)."""
    return _with_allowed(path if isinstance(path, Run) else Run(path), allow_import).student()


def _names(names: Iterable[str]) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)  # one name, not its letters


def _with_allowed(run: Run, allow_import: Iterable[str]) -> Run:
    """``run``, or the same run with ``allow_import`` added to what it allows."""
    extra = _names(allow_import)
    return Run(run.path, (*run.allow_import, *extra)) if extra else run
