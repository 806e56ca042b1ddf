"""What a study leaves in its folder: ``best.yaml`` (the recipe with the best trial's values),
``study.json`` (every trial), ``study.md`` (a table) and, when matplotlib is installed,
``history.png`` and ``importance.png``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crossdistill._util.files import write_atomic, write_json
from crossdistill.config import Recipe, SearchDim
from crossdistill.tune.space import sampled_recipe, stored_values


@dataclass
class TuneResult:
    """What a study leaves: its folder, the best trial (None when no trial completed), the
    best recipe's path, and the summary written to ``study.json``."""

    study_dir: Path
    best: dict[str, Any] | None
    best_recipe: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


def _number(value: Any) -> Any:
    """JSON has no NaN/Inf: those become None."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def summarize(study: Any, space: dict[str, SearchDim], folder: Path) -> dict[str, Any]:
    """``study.json``'s content: the study's settings, every trial, the best, the baseline."""
    trials = []
    for t in study.get_trials(deepcopy=False):
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        trials.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "params": stored_values(t.params, space),
                "value": _number(t.value),
                "intermediate": {str(k): _number(v) for k, v in t.intermediate_values.items()},
                "run": t.user_attrs.get("run"),
                "seconds": seconds,
                **{k: t.user_attrs[k] for k in ("retry_of", "error") if k in t.user_attrs},
            }
        )
    best = None
    complete = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    if complete:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": stored_values(b.params, space)}
    attrs = study.user_attrs
    return {
        "metric": attrs.get("metric"),
        "direction": attrs.get("direction"),
        "split": "validation",
        "space": {k: v.model_dump(mode="json", exclude_defaults=True) for k, v in space.items()},
        "counts": {s: sum(t["state"] == s for t in trials) for s in _STATES},
        "best": best,
        "baseline": attrs.get("baseline"),
        "trials": trials,
    }


_STATES = ("complete", "pruned", "fail", "running", "waiting")


def best_recipe(recipe: Recipe, best: dict[str, Any]) -> Recipe:
    """``recipe`` with the best trial's values, named ``<name>-tuned`` (its ``tune:`` kept)."""
    tuned = sampled_recipe(recipe, best["params"], where="the best trial's recipe")
    return tuned.model_copy(update={"name": f"{recipe.name}-tuned"})


def write_reports(
    study: Any, recipe: Recipe, space: dict[str, SearchDim], folder: Path
) -> TuneResult:
    """Write the study's files into ``folder``; returns its :class:`TuneResult`."""
    summary = summarize(study, space, folder)
    write_json(folder / "study.json", summary, what="the study summary")
    write_atomic(folder / "study.md", markdown(summary), what="the study table")
    best_path = None
    if summary["best"] is not None:
        best_path = folder / "best.yaml"
        tuned = best_recipe(recipe, summary["best"])
        b = summary["best"]
        head = (
            f"# crossdistill tune: trial {b['number']} of {folder}, {summary['metric']} "
            f"{b['value']:.6g} on the validation split.\n"
            f"# Train it (the test split is read once, after the last epoch):\n"
            f"#   crossdistill run {best_path}\n"
        )
        body = yaml.safe_dump(tuned.model_dump(mode="json"), sort_keys=False)
        write_atomic(best_path, head + body, what="the best recipe")
    plots(study, summary, folder)
    return TuneResult(folder, summary["best"], best_path, summary)


def markdown(summary: dict[str, Any]) -> str:
    """``study.md``: the best, the baseline, and one row per trial."""
    metric = summary["metric"]
    keys = list(summary["space"])
    lines = [f"# Study: {metric} on the validation split ({summary['direction']})", ""]
    best, base = summary["best"], summary["baseline"]
    if best is not None:
        lines.append(f"Best: trial {best['number']}, {metric} {best['value']:.4f}.")
    if isinstance(base, dict) and base.get("value") is not None:
        lines.append(
            f"Baseline (the student without the teacher's losses): {metric} {base['value']:.4f}."
        )
    counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items() if n)
    lines += [f"Trials: {counts or 'none'}.", ""]
    lines.append("| trial | state | " + " | ".join([metric, *keys]) + " |")
    lines.append("|---" * (3 + len(keys)) + "|")
    for t in summary["trials"]:
        cells = [str(t["number"]), t["state"], _cell(t["value"])]
        cells += [_cell(t["params"].get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if not isinstance(value, str) else value


# -------------------------------------------------------------------------------- plots


def plots(study: Any, summary: dict[str, Any], folder: Path) -> list[Path]:
    """``history.png`` and ``importance.png`` when matplotlib is installed (the ``report``
    extra); drawn on ``matplotlib.figure.Figure`` (no pyplot: nothing global changes)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return []
    written = [folder / "history.png"]
    _history(Figure(figsize=(6, 3.6)), summary).savefig(written[0], dpi=120)
    found = importances(study)
    if found:
        written.append(folder / "importance.png")
        _importance(Figure(figsize=(6, 0.6 + 0.45 * len(found))), found).savefig(
            written[-1], dpi=120
        )
    return written


def importances(study: Any) -> dict[str, float]:
    """Each parameter's importance for the metric: optuna's fANOVA (Hutter et al., 2014, "An
    Efficient Approach for Assessing Hyperparameter Importance"), which fits scikit-learn's
    random forest; without scikit-learn, optuna's PED-ANOVA (Watanabe et al., 2023). Empty
    with fewer than two completed trials or nothing varied."""
    import optuna  # the study exists: optuna is installed

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2 or not any(t.params for t in complete):
        return {}
    try:
        import sklearn.ensemble  # noqa: F401

        evaluator: Any = optuna.importance.FanovaImportanceEvaluator(seed=0)
    except ImportError:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental", "too few trials"
        try:
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
        except (RuntimeError, ValueError):  # e.g. every completed trial has the same value
            return {}


def _history(fig: Any, summary: dict[str, Any]) -> Any:
    ax = fig.add_subplot()
    maximize = summary["direction"] == "maximize"
    done = [t for t in summary["trials"] if t["state"] == "complete" and t["value"] is not None]
    pruned = [t for t in summary["trials"] if t["state"] == "pruned" and t["intermediate"]]
    if pruned:
        last = [list(t["intermediate"].values())[-1] for t in pruned]
        ax.scatter([t["number"] for t in pruned], last, marker="x", color="0.6", label="pruned")
    if done:
        xs = [t["number"] for t in done]
        ys = [t["value"] for t in done]
        ax.scatter(xs, ys, color="C0", label="trial")
        best, running = [], None
        for y in ys:
            running = y if running is None else (max if maximize else min)(running, y)
            best.append(running)
        ax.step(xs, best, where="post", color="C1", label="best so far")
    base = summary.get("baseline")
    if isinstance(base, dict) and base.get("value") is not None:
        ax.axhline(base["value"], color="C2", linestyle="--", label="baseline (no teacher)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{summary['metric']} (validation)")
    ax.set_title("optimisation history")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def _importance(fig: Any, found: dict[str, float]) -> Any:
    ax = fig.add_subplot()
    names = list(found)[::-1]
    ax.barh(names, [found[n] for n in names], color="C0")
    ax.set_xlabel("importance")
    ax.set_title("parameter importances")
    fig.tight_layout()
    return fig
