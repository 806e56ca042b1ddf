"""``tune_recipe``: an Optuna study over a recipe's ``tune.space``, each trial a run of the
recipe scored on its validation split (the last epoch's ``tune.metric``; the test split is
never read), kept in SQLite so that the same command continues it after a crash.

Optuna (Akiba et al., 2019, "Optuna: A Next-generation Hyperparameter Optimization
Framework") provides the TPE sampler (Bergstra et al., 2011, "Algorithms for
Hyper-Parameter Optimization") and the median pruner (Golovin et al., 2017, "Google Vizier").
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from crossdistill import errors
from crossdistill._util.files import process_running
from crossdistill.config import Recipe, TuneSpec, apply_override, load_recipe, validate_recipe
from crossdistill.errors import (
    CallbackError,
    ConfigError,
    CrossDistillError,
    NonFiniteLossError,
    require,
)
from crossdistill.pipeline import cache_recipe, run_recipe
from crossdistill.registry import import_modules
from crossdistill.tune import pruning
from crossdistill.tune.report import TuneResult, write_reports
from crossdistill.tune.space import (
    describe,
    reads_teacher,
    resolve_space,
    sampled_recipe,
    suggest,
)

STUDY = "crossdistill"  # the one study in each study.db
# the study's identity, checked when a study folder is reused: a study of another recipe,
# space or metric must not be continued by this one
IDENTITY = ("recipe", "space", "metric", "direction")
# counted toward the trial budget; a failed trial that was retried (its process died) is not
COUNTED = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")


@dataclass
class _Plan:
    """Everything a worker needs to run trials (picklable: spawned workers receive it)."""

    recipe: dict[str, Any]  # the base recipe, resolved (JSON-able)
    study_dir: Path
    storage: str
    n_trials: int
    deadline: float | None  # time.time() after which no trial starts
    progress: bool
    jobs: int
    imports: list[str]
    pruner: Any = None  # an optuna pruner given from Python (tests); else tune.pruner's
    sys_path: list[str] = field(default_factory=list)


def _optuna() -> Any:
    optuna = require("optuna", "`crossdistill tune`", "pip install 'crossdistill[tune]'")
    # the one line per trial is crossdistill's; optuna's own INFO lines would repeat it
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_study_dir(recipe: Recipe) -> Path:
    """``<output.dir>/<name>-tune``: where a study lives unless ``study_dir`` says otherwise."""
    return recipe.output.dir / f"{recipe.name}-tune"


def tune_recipe(
    recipe: Recipe | str | Path,
    overrides: list[str] | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    jobs: int = 1,
    study_dir: str | Path | None = None,
    progress: bool = True,
    imports: list[str] | None = None,
    pruner: Any = None,
) -> TuneResult:
    """Search ``recipe``'s ``tune.space`` with Optuna; returns the study's :class:`TuneResult`.

    Each trial trains the recipe with the sampled values under
    ``<study_dir>/trials/trial-<n>`` (``eval.test: false``: the test split is never read) and
    scores the last epoch's ``tune.metric`` on the validation split, which the recipe must
    have (``data.validation``). The study lives in ``<study_dir>/study.db`` (default
    ``<output.dir>/<name>-tune``): run it again to continue, the trials already finished
    counting toward ``n_trials`` (default ``tune.trials``); a trial whose process died is
    marked failed and run again. ``timeout`` (seconds) stops starting new trials. ``jobs``
    processes run trials side by side, each on ``train.device``, sharing the machine's
    cores. A recipe with a ``store:`` has it written once, first; ``tune.baseline`` trains
    the student without the teacher's losses once, as the reference. Writes ``best.yaml``,
    ``study.json``, ``study.md`` and, with matplotlib, ``history.png`` and
    ``importance.png``. ``imports``: modules to import in every worker (``--import``);
    ``pruner``: an optuna pruner instead of ``tune.pruner``'s.
    """
    optuna = _optuna()
    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        recipe = _override(recipe, overrides)
    import_modules([*(imports or []), *recipe.imports])
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}", hint="e.g. --jobs 2")
    spec = recipe.tune or TuneSpec()
    if recipe.data.validation is None:
        raise ConfigError(
            "the recipe has no validation split: a study selects on validation, never on "
            f"the test split (data.eval_split {recipe.data.eval_split!r})",
            hint="carve one from the training data with --set data.validation=0.1 (or name "
            "the source's own split: --set data.validation=dev)",
        )
    space = resolve_space(recipe)
    folder = Path(study_dir) if study_dir is not None else default_study_dir(recipe)
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{folder.resolve() / 'study.db'}"
    study = _open_study(optuna, storage, recipe, spec, space)
    if recipe.store is not None:  # the teacher runs once per study, not once per trial
        cache_recipe(recipe, progress=progress and recipe.train.progress)
    _retry_dead_trials(optuna, study)
    if spec.baseline and "baseline" not in study.user_attrs:
        study.set_user_attr("baseline", _baseline(recipe, spec, folder, progress))
    plan = _Plan(
        recipe=recipe.model_dump(mode="json"),
        study_dir=folder,
        storage=storage,
        n_trials=n_trials if n_trials is not None else spec.trials,
        deadline=time.time() + timeout if timeout is not None else None,
        progress=progress,
        jobs=jobs,
        imports=list(imports or []),
        pruner=pruner,
        sys_path=list(sys.path),
    )
    if jobs == 1:
        _work(plan, worker=0)
    else:
        _spawn(plan)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    return write_reports(study, recipe, space, folder)


def _override(recipe: Recipe, items: list[str]) -> Recipe:
    raw = copy.deepcopy(recipe.model_dump(mode="json"))
    for item in items:
        apply_override(raw, item)
    return validate_recipe(raw)


def _identity(recipe: Recipe, spec: TuneSpec, space: dict[str, Any]) -> dict[str, str]:
    return {
        "recipe": recipe.fingerprint(),
        "space": json.dumps({k: v.model_dump(mode="json") for k, v in space.items()}),
        "metric": spec.metric,
        "direction": spec.direction,
    }


def _open_study(optuna: Any, storage: str, recipe: Recipe, spec: TuneSpec, space: dict) -> Any:
    """The study in ``storage``, created on first use; one of another recipe, space or
    metric is refused."""
    study = optuna.create_study(
        study_name=STUDY, storage=storage, direction=spec.direction, load_if_exists=True
    )
    mine = _identity(recipe, spec, space)
    found = {k: study.user_attrs.get(k) for k in IDENTITY}
    if all(v is None for v in found.values()):
        for key, value in mine.items():
            study.set_user_attr(key, value)
    elif found != mine:
        differ = [k for k in IDENTITY if found[k] != mine[k]]
        raise ConfigError(
            f"{storage.removeprefix('sqlite:///')} holds a study of a different "
            f"{' and '.join(differ)}: it cannot be continued with this one",
            hint="give this study its own folder (--study-dir DIR), or delete that one",
        )
    return study


def _alive(pid: Any) -> bool:
    return isinstance(pid, int) and process_running(pid)


def _retry_dead_trials(optuna: Any, study: Any) -> None:
    """Trials left running by a process of this machine that no longer exists (killed, out of
    memory): marked failed and queued to run again with the same values."""
    host = socket.gethostname()
    running = optuna.trial.TrialState.RUNNING
    for trial in study.get_trials(deepcopy=False, states=(running,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and not _alive(attrs.get("pid")):
            _give_up(optuna, study, trial.number, trial.params, "its process died")


def _give_up(optuna: Any, study: Any, number: int, params: dict[str, Any], why: str) -> None:
    """Mark trial ``number`` failed (``why``) and queue its values to run again."""
    study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(params, user_attrs={"retry_of": number, "retry_why": why})


def _baseline(recipe: Recipe, spec: TuneSpec, folder: Path, progress: bool) -> dict[str, Any]:
    """Train the student without the losses that read the teacher (the reference the
    study's trials should beat); returns what study.json records of it."""
    kept = [s for i, s in enumerate(recipe.losses) if not reads_teacher(recipe, i)]
    if not kept:
        why = "every loss of the recipe reads the teacher: nothing is left to train alone"
        return {"skipped": why}
    raw = copy.deepcopy(recipe.model_dump(mode="json"))
    raw.update(name="baseline", store=None)
    raw["losses"] = [s.model_dump(mode="json") for s in kept]
    raw["output"]["dir"] = str(folder)
    _trial_settings(raw, spec.metric, None, progress and recipe.train.progress)
    baseline = validate_recipe(raw, source="the baseline recipe")
    _say(f"baseline: the student without the teacher's losses -> {baseline.run_dir}")
    try:
        result = run_recipe(baseline, overwrite=True)
    except CallbackError as exc:
        raise _cause(exc) from None
    last = _validation(result)
    value = last.get(spec.metric)
    _say(f"baseline: {spec.metric}={value:.4g}" if isinstance(value, float) else "baseline done")
    return {
        "run": str(baseline.run_dir.relative_to(folder)),
        "value": value,
        "losses": [s.term for s in kept],
        "metrics": {k: v for k, v in last.items() if isinstance(v, (int, float))},
    }


def _validation(result: Any) -> dict[str, Any]:
    """The last epoch's validation evaluation of a finished run (what a study selects on;
    ``result.metrics`` are the test split's when a run reads it)."""
    return dict(result.history.eval[-1]) if result.history.eval else {}


def _trial_settings(raw: dict[str, Any], metric: str, number: int | None, progress: bool) -> None:
    """What every run of a study has: no test split, the reporting callback, quiet bars
    when several run at once."""
    raw.setdefault("eval", {})["test"] = False
    train = raw.setdefault("train", {})
    train["progress"] = progress
    report = {"name": pruning.PATH, "params": {"metric": metric, "trial": number}}
    train["callbacks"] = [*train.get("callbacks", []), report]


def _cause(exc: CallbackError) -> CrossDistillError:
    """The ConfigError the reporting callback raised (an unknown metric) rather than the
    CallbackError around it; any other callback failure as it was."""
    cause = exc.__cause__
    return cause if isinstance(cause, ConfigError) else exc


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (counting and starting a trial is one step for all
    workers, so that together they start exactly the budget)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _counted(study: Any) -> int:
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    return sum(
        t.state.name in COUNTED and not (t.state.name == "FAIL" and t.number in retried)
        for t in study.get_trials(deepcopy=False)
    )


def _work(plan: _Plan, worker: int) -> None:
    """Run trials until the study holds ``n_trials`` (or the deadline passes)."""
    optuna = _optuna()
    recipe = validate_recipe(plan.recipe)
    spec = recipe.tune or TuneSpec()
    space = resolve_space(recipe)
    storage = optuna.storages.RDBStorage(plan.storage)
    started = len(optuna.load_study(study_name=STUDY, storage=storage).trials)
    # a continued study must not draw the first run's values again: the seed moves with the
    # trials already there (and with the worker)
    seed = (spec.seed + started + 100_003 * worker) % 2**32
    pruner = plan.pruner
    if pruner is None:
        # a trial is compared with the median only after a third of its epochs: distillation
        # terms often start slower than cross-entropy alone and overtake it later (optuna
        # prunes from step n_warmup_steps on; the steps are epochs, from 1)
        warmup = recipe.train.epochs // 3 + 1
        pruners = {
            "median": lambda: optuna.pruners.MedianPruner(n_warmup_steps=warmup),
            "none": optuna.pruners.NopPruner,
        }
        pruner = pruners[spec.pruner]()
    study = optuna.load_study(
        study_name=STUDY,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner,
    )
    while plan.deadline is None or time.time() < plan.deadline:
        with _locked(plan.study_dir / "ask.lock"):
            if _counted(study) >= plan.n_trials:
                return
            trial = study.ask()
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("host", socket.gethostname())
        _trial(optuna, study, trial, recipe, spec, space, plan)


def _trial(
    optuna: Any,
    study: Any,
    trial: Any,
    recipe: Recipe,
    spec: TuneSpec,
    space: dict[str, Any],
    plan: _Plan,
) -> None:
    """Train one trial and tell the study how it ended."""
    state = optuna.trial.TrialState
    n = trial.number
    begun = time.time()
    try:
        values = suggest(trial, space)
        sampled = sampled_recipe(recipe, values, where=f"trial {n}")
    except BaseException:
        study.tell(trial, state=state.FAIL)
        raise
    raw = sampled.model_dump(mode="json")
    raw["name"] = f"trial-{n}"
    raw["output"]["dir"] = str(plan.study_dir / "trials")
    _trial_settings(raw, spec.metric, n, plan.progress and plan.jobs == 1 and recipe.train.progress)
    run = validate_recipe(raw, source=f"trial {n}")
    trial.set_user_attr("run", str(run.run_dir.relative_to(plan.study_dir)))
    pruning.LIVE[n] = trial
    try:
        result = run_recipe(run, overwrite=True)
    except pruning.Pruned as exc:
        study.tell(trial, state=state.PRUNED)
        _said(
            study,
            n,
            f"pruned after epoch {exc.epoch} ({spec.metric}={exc.value:.4g})",
            values,
            begun,
        )
        return
    except NonFiniteLossError as exc:  # a diverging lr is an outcome, not a broken study
        trial.set_user_attr("error", exc.message)
        study.tell(trial, state=state.FAIL)
        _said(study, n, "failed: the loss became NaN/Inf", values, begun)
        return
    except CallbackError as exc:
        study.tell(trial, state=state.FAIL)
        raise _cause(exc) from None
    except CrossDistillError:
        study.tell(trial, state=state.FAIL)
        raise
    except BaseException:  # interrupted or a bug: run the same values again next time
        _give_up(optuna, study, n, trial.params, "interrupted")
        raise
    finally:
        pruning.LIVE.pop(n, None)
    value = _validation(result).get(spec.metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        trial.set_user_attr("error", f"{spec.metric} is {value!r}")
        study.tell(trial, state=state.FAIL)
        _said(study, n, f"failed: {spec.metric} is {value!r}", values, begun)
        return
    study.tell(trial, float(value))
    _said(study, n, f"{spec.metric}={value:.4g}", values, begun)


def _said(study: Any, n: int, what: str, values: dict[str, Any], begun: float) -> None:
    best = ""
    with contextlib.suppress(ValueError):  # no trial completed yet
        b = study.best_trial
        best = f" (best {b.value:.4g}, trial {b.number})"
    _say(f"trial {n}: {what}{best}  {describe(values)}  [{time.time() - begun:.1f}s]")


def _say(line: str) -> None:
    Console(stderr=True).print(escape(line), highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------ workers


def _spawn(plan: _Plan) -> None:
    """``plan.jobs`` worker processes (spawned: no state forked from this one) running
    trials of the one study; the first failure is raised here once all have stopped."""
    ctx = multiprocessing.get_context("spawn")
    failures = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(plan, i, failures), name=f"tune-worker-{i}")
        for i in range(plan.jobs)
    ]
    for w in workers:
        w.start()
    try:
        for w in workers:
            w.join()
    except BaseException:  # Ctrl-C / SIGTERM here: the workers give their trials back first
        # a Ctrl-C at the terminal reached the workers too: give them a moment before a
        # second SIGINT, which would interrupt their cleanup
        for w in workers:
            w.join(timeout=5)
        for w in workers:
            if w.is_alive() and w.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGINT)
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():  # its trial is retried by the next run (its process is gone)
                w.kill()
        raise
    if not failures.empty():
        kind, message, hint = failures.get()
        cls = getattr(errors, kind, CrossDistillError)
        raise cls(message, hint=hint)
    broken = [w.name for w in workers if w.exitcode]
    if broken:
        raise CrossDistillError(
            f"tune workers {', '.join(broken)} ended with an error (see their output above)",
            hint="fix it and run the same command again: the study continues",
        )


def _worker(plan: _Plan, index: int, failures: Any) -> None:
    """A spawned worker: the parent's import path and modules, its share of the cores."""
    sys.path[:] = plan.sys_path
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // plan.jobs))
    try:
        import_modules(plan.imports)
        _work(plan, index)
    except CrossDistillError as exc:
        failures.put((type(exc).__name__, exc.message, exc.hint))
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
