"""Born-again training (``generations: N``): each generation's student is the frozen teacher of
the next (Born-Again Networks, Furlanello et al., ICML 2018, arXiv:1805.04770), and the
generations' mean-logit ensemble is evaluated at the end.

The run folder ``output.dir/<name>/`` holds one complete :class:`~crossdistill.runs.Run` per
generation and three files of its own::

    recipe.yaml            the recipe as given (generations: N); not config.yaml, so that the
                           folder is never taken for one run (unfinished, it would be):
                           `crossdistill run <folder>/recipe.yaml --resume` continues it
    gen0/                  only when the recipe has no teacher (nor a store of one): the student
                           trained from the labels by the recipe's terms that read no teacher,
                           their weights scaled to the recipe's total
    gen1/ ... genN/        generation k's teacher is generation k - 1's student; generation 1's
                           is the recipe's teacher (or gen0's student)
    generations.json       every generation's eval.json, and the ensemble's metrics (written
                           after each generation; ``"finished": true`` once all are done)
    ensemble_teacher.yaml  a `teacher:` section, the ensemble of generations 1..N, to paste into
                           a recipe

Each ``genK/`` is made by :func:`~crossdistill.pipeline.run_recipe` from a recipe of its own
(:func:`generation_recipes`: ``name: genK``, ``output.dir`` the folder, ``generations: 1``), so
``crossdistill eval / report / export`` take it as any run.

Every generation trains with the recipe's seed: the same initialisation, data order,
augmentations and ``limit_train`` subset (which the seed draws), so generations differ by their
teacher alone, as in the paper, where each generation repeats the same training recipe. (A seed
per generation would also draw another ``limit_train`` subset each time.) An ensemble of them is
then less diverse than one of differently seeded models; vary ``seed:`` across runs for seed
variance.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from crossdistill._util.device import amp_dtype, select_device
from crossdistill._util.files import write_atomic, write_json
from crossdistill.build import build_eval_loader, build_teacher, reads_teacher, trained_spec
from crossdistill.config import (
    LossSpec,
    ModelSpec,
    Recipe,
    TeacherSpec,
    dump_recipe,
    validate_recipe,
)
from crossdistill.core.wrappers import EnsembleTeacher, Student
from crossdistill.errors import CheckpointError, ConfigError, CrossDistillError
from crossdistill.evaluate import evaluate_student
from crossdistill.losses import build_loss
from crossdistill.pipeline import RunResult, run_recipe
from crossdistill.registry import import_modules
from crossdistill.runs import MULTI_RUN_RECIPE, Run, claim_multi_run_folder
from crossdistill.train.runtime import barrier, distributed_rank
from crossdistill.train.trainer import History

log = logging.getLogger(__name__)

RECIPE_FILE = MULTI_RUN_RECIPE
SUMMARY_FILE = "generations.json"
ENSEMBLE_FILE = "ensemble_teacher.yaml"


def generation_dir(run_dir: Path, k: int) -> Path:
    """The run folder of generation ``k`` inside the generations' folder ``run_dir``."""
    return run_dir / f"gen{k}"


def generation_recipes(recipe: Recipe) -> list[tuple[int, Recipe]]:
    """``(k, recipe of generation k)``, first to last: generation 0 when ``recipe`` has no
    teacher, then 1..N. Every one is validated, and what a later generation's teacher must
    emit is checked, before anything trains."""
    import_modules(recipe.imports)
    top = recipe.run_dir
    base = recipe.model_dump(mode="json")
    base.update(generations=1, output={"dir": str(top)})
    plan: list[tuple[int, Recipe]] = []
    # a store without a teacher holds the outputs of a teacher: generation 1 learns from it
    taught = recipe.teacher is not None or recipe.store is not None
    if not taught:
        plan.append((0, _validated({**base, **_untaught(recipe)}, 0, recipe.name)))
    else:
        plan.append((1, _validated(base, 1, recipe.name)))
    while plan[-1][0] < recipe.generations:
        k = plan[-1][0] + 1
        teacher = _student_as_teacher(recipe, generation_dir(top, k - 1))
        raw = {**base, "teacher": teacher.model_dump(mode="json"), "store": None}
        raw["data"] = _teacher_reads_the_students_view(raw["data"])
        plan.append((k, _validated(raw, k, recipe.name)))
    if len(plan) > 1:
        _check_teacher_keys(recipe)
    return plan


def _validated(raw: dict[str, Any], k: int, name: str) -> Recipe:
    raw["name"] = f"gen{k}"
    return validate_recipe(raw, source=f"generation {k} of {name!r}")


def _untaught(recipe: Recipe) -> dict[str, Any]:
    """What generation 0 changes: no teacher, and only the terms that read none, their weights
    scaled to sum to what every term's do (ce 0.5 + kd 0.5 gives ce 1.0: the teacher's share
    of the loss goes to the labels, so generation 0 trains as the recipe would without one)."""
    kept = [loss for i, loss in enumerate(recipe.losses) if not reads_teacher(loss, f"losses[{i}]")]
    if not any(loss.largest_weight > 0 for loss in kept):
        raise ConfigError(
            f"generations: {recipe.generations} without a teacher trains generation 0 from the "
            "labels, with the loss terms that read no teacher, and no term of this recipe "
            f"does ({', '.join(loss.term for loss in recipe.losses)})",
            hint="add a term of its own, e.g. `- {name: ce}` under `losses:`, or give the "
            "recipe a `teacher:` to be generation 1's",
        )
    mine = sum(loss.weight for loss in kept)
    scale = sum(loss.weight for loss in recipe.losses) / mine if mine > 0 else 1.0
    losses = [_scaled(loss, scale).model_dump(mode="json") for loss in kept]
    return {"teacher": None, "store": None, "losses": losses}


def _scaled(loss: LossSpec, scale: float) -> LossSpec:
    """``loss`` with its weight (and the weight's schedule) times ``scale``."""
    schedule = dict(loss.schedule)
    ramp = schedule.get("weight")
    if ramp is not None:
        schedule["weight"] = ramp.model_copy(
            update={"start": ramp.start * scale, "end": ramp.end * scale}
        )
    return loss.model_copy(update={"weight": loss.weight * scale, "schedule": schedule})


def _student_spec(recipe: Recipe, run_dir: Path) -> ModelSpec:
    """The student of the generation in ``run_dir`` as a model to read: the recipe's student
    model with that run's weights, outputs, pipeline and taps."""
    return trained_spec(recipe.student, run_dir / "student.safetensors")


def _student_as_teacher(recipe: Recipe, run_dir: Path) -> TeacherSpec:
    """The student of the generation in ``run_dir`` as a frozen teacher."""
    return TeacherSpec(**_student_spec(recipe, run_dir).model_dump())


def _teacher_reads_the_students_view(data: dict[str, Any]) -> dict[str, Any]:
    """A generation's teacher is a student: it reads what the student reads. With no
    ``data.views.student`` both read the split's own sides (the same field for every source
    whose sides are one field; a cross-modal source needs ``data.views.student`` set)."""
    views = dict(data.get("views") or {})
    views.pop("teacher", None)
    if "student" in views:
        views["teacher"] = views["student"]
    return {**data, "views": views}


def _check_teacher_keys(recipe: Recipe) -> None:
    """From generation 2 on (1 without a teacher) the teacher is a student: each term that
    reads the teacher must read what the student emits, found now rather than after a
    generation has trained."""
    emitted = set(recipe.student.outputs)
    emitted |= {f"{tap.kind}/{tap.name}" for tap in recipe.student.taps}
    for i, spec in enumerate(recipe.losses):
        if not reads_teacher(spec, f"losses[{i}]"):
            continue
        needs = build_loss(spec.name, spec.params, where=f"losses[{i}]").needs()
        missing = sorted(set(needs.teacher) - emitted)
        if missing:
            raise ConfigError(
                f"losses[{i}] ({spec.term}) reads {missing} from the teacher; with "
                f"generations: {recipe.generations} the teacher of a later generation is the "
                f"previous student, which emits {sorted(emitted)}",
                hint="give the student the outputs or taps (`student.taps: [{name, path}]`) "
                "the term reads, or drop the term",
            )


# ------------------------------------------------------------------------------ running


def run_generations(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Train ``recipe.generations`` born-again generations, each a Run in ``recipe.run_dir``
    (see the module docstring for the layout), then evaluate the ensemble of generations
    1..N on the split the generations' eval.json report.

    ``resume``: a finished generation made by the same derived recipe is reused, a started one
    resumed, so an interrupted run continues where it stopped (a later ``generations:`` adds
    generations to a finished folder). ``overwrite``: the whole folder is emptied once, before
    the first generation trains; the checks on its data and models come after that.

    Returns the last generation's run, history (empty when it was reused), student and
    metrics; the metrics also hold ``generations`` (one summary per generation) and
    ``ensemble``."""
    if resume and overwrite:
        raise ConfigError("a run is either resumed or overwritten, not both")
    plan = generation_recipes(recipe)  # everything a recipe can get wrong, before any write
    top = recipe.run_dir
    rank, _ = distributed_rank()
    created = not top.exists()
    if rank == 0:
        _prepare(top, recipe, resume, overwrite)
    barrier()
    try:
        result, summary = _train(recipe, plan, rank)
    except Exception:
        # a first generation refused before its first checkpoint leaves nothing to resume:
        # the folder is left as it was, and a rerun is not refused as "already exists"
        if rank == 0 and created and not _used(top):
            shutil.rmtree(top, ignore_errors=True)
        raise
    ensemble: dict[str, Any] = {}
    if rank == 0:
        members = [generation_dir(top, k) for k, _ in plan if k >= 1]
        teacher = ensemble_teacher_spec(recipe, members)
        write_atomic(
            top / ENSEMBLE_FILE,
            _ensemble_yaml(recipe, teacher, members),
            what="the ensemble teacher",
        )
        ensemble = {
            "members": [m.name for m in members],
            "metrics": evaluate_ensemble(plan[-1][1], teacher, summary[-1]["metrics"]),
        }
        _write_summary(top, recipe, summary, ensemble)
    barrier()
    result.metrics = {**result.metrics, "generations": summary, "ensemble": ensemble}
    return result


def _train(
    recipe: Recipe, plan: list[tuple[int, Recipe]], rank: int
) -> tuple[RunResult, list[dict[str, Any]]]:
    """Each generation of ``plan`` reused, resumed or trained; the last one's result and a
    summary of each (written to generations.json as it grows)."""
    summary: list[dict[str, Any]] = []
    trained: int | None = None  # the first generation trained (not reused) in this call
    result: RunResult | None = None
    for k, spec in plan:
        run = Run(spec.run_dir)
        if trained is None and _reusable(run, spec):
            result = None
        else:
            if trained is not None and run.path.exists():
                raise CheckpointError(
                    f"{run.path} was trained from generation {k - 1} as it was before this "
                    f"call, which has been trained again since (from generation {trained} on)",
                    hint=f"rerun with --overwrite, or delete {run.path} and the generations "
                    "after it, then --resume",
                )
            # a folder left by an interruption is continued (nothing in it: started afresh)
            result = run_recipe(spec, resume=run.path.exists())
            trained = k if trained is None else trained
        summary.append(
            {
                "generation": k,
                "run": run.path.name,
                "teacher": _teacher_name(k, plan[0][0], recipe),
                "metrics": run.final_metrics(),
            }
        )
        if rank == 0:
            _write_summary(recipe.run_dir, recipe, summary, None)
    last = Run(plan[-1][1].run_dir)
    if result is None:  # the last generation was reused
        student = last.trained_student(plan[-1][1].student).model
        result = RunResult(last, History(), student, _without_epoch(last.final_metrics()))
    return result, summary


def _used(top: Path) -> bool:
    """Whether the folder holds more than what :func:`run_generations` writes before the
    first generation (recipe.yaml, generations.json): a generation's folder."""
    return top.is_dir() and any(p.name not in (RECIPE_FILE, SUMMARY_FILE) for p in top.iterdir())


def _prepare(top: Path, recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Refuse a folder this call may not write, empty it (``overwrite``), write recipe.yaml."""
    claim_multi_run_folder(
        top,
        recipe,
        resume,
        overwrite,
        what="generations",
        used=_used(top),
        same=lambda kept, this: _lineage(kept) == _lineage(this),
    )
    beyond = sorted(k for k in _generations_in(top) if k > recipe.generations)
    if beyond:
        raise CheckpointError(
            f"{top} holds generations up to {beyond[-1]}, and this recipe asks for "
            f"{recipe.generations}",
            hint=f"resume with `generations: {beyond[-1]}` (or more) to keep them, or replace "
            "the folder with --overwrite",
        )
    dump_recipe(recipe, top / RECIPE_FILE)


def _generations_in(top: Path) -> list[int]:
    """The numbers of the generation folders (``gen<k>``) in ``top``."""
    names = (p.name for p in top.glob("gen*") if p.is_dir())
    return [int(name[3:]) for name in names if name[3:].isdigit()]


def _lineage(recipe: Recipe) -> str:
    """The fingerprint of a recipe but for its number of generations (more may be added)."""
    return recipe.model_copy(update={"generations": 1}).fingerprint()


def _reusable(run: Run, spec: Recipe) -> bool:
    return run.exists and run.finished and run.recipe().fingerprint() == spec.fingerprint()


def _teacher_name(k: int, first: int, recipe: Recipe) -> str | None:
    if k == 0:
        return None
    if k == first:
        return "teacher" if recipe.teacher is not None else "store"
    return f"gen{k - 1}"


def _without_epoch(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metrics.items() if key != "epoch"}


def _write_summary(
    top: Path, recipe: Recipe, summary: list[dict[str, Any]], ensemble: dict[str, Any] | None
) -> None:
    """generations.json: what is done so far; ``finished`` (with the ensemble) at the end."""
    data = {
        "name": recipe.name,
        "generations": summary,
        "ensemble": ensemble,
        "finished": ensemble is not None,
    }
    write_json(top / SUMMARY_FILE, data, indent=2, what="the generations' summary")


# ------------------------------------------------------------------------------ the ensemble


def ensemble_teacher_spec(recipe: Recipe, runs: list[Path]) -> TeacherSpec:
    """The mean-logit ensemble of the students in ``runs`` as a teacher (``members:``)."""
    return TeacherSpec(members=[_student_spec(recipe, path) for path in runs])


def _ensemble_yaml(recipe: Recipe, teacher: TeacherSpec, runs: list[Path]) -> str:
    body = yaml.safe_dump(
        {"teacher": teacher.model_dump(mode="json", exclude_defaults=True)}, sort_keys=False
    )
    names = ", ".join(path.name for path in runs)
    return (
        f"# The mean-logit ensemble of generations {names} of {recipe.name!r}\n"
        "# (crossdistill.generations): paste this `teacher:` into a recipe to distil from it.\n"
        + body
    )


def evaluate_ensemble(
    recipe: Recipe, teacher: TeacherSpec, reported: dict[str, Any]
) -> dict[str, Any]:
    """The metrics of the ensemble ``teacher`` on the split ``reported`` (a generation's
    eval.json) is on, by the evaluator that made it: the numbers compare one to one.
    Empty when the students emit nothing an ensemble averages (logits, embedding, scores);
    ``not_evaluated`` says why when the evaluator needs a teacher the ensemble has not (an
    embedding student is scored by its agreement with its teacher's embeddings)."""
    outputs = recipe.student.outputs
    averaged = [name for name in outputs if name in EnsembleTeacher.averaged]
    if not averaged:
        return {}
    spec = teacher.model_copy(
        update={"members": [m.model_copy(update={"taps": []}) for m in teacher.members]}
    )
    ensemble = build_teacher(spec)
    assert isinstance(ensemble, EnsembleTeacher)
    device = select_device(recipe.train.device)
    split = reported.get("split") or recipe.data.eval_split
    loader = build_eval_loader(recipe, device, split=split)
    # posing as a student to the evaluator: the averaged outputs (each member applies its
    # own pipeline to the student's view)
    model = Student(ensemble, outputs=averaged).to(device)
    amp = amp_dtype(recipe.train.amp, device)
    try:
        metrics = evaluate_student(model, loader, None, device, amp, recipe.eval.topk)
    except CrossDistillError as exc:  # the generations are trained: keep them, say why
        log.warning("the ensemble of generations was not evaluated: %s", exc.message)
        return {"split": split, "not_evaluated": exc.message}
    return {"split": split, **metrics}
