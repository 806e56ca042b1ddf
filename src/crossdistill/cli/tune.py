"""``crossdistill tune RECIPE``: search a recipe's settings on its validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossdistill.cli._app import app, overrides, print_metrics, state
from crossdistill.cli._signals import command_line, on_interrupt


@app.command(context_settings={"allow_extra_args": True})
def tune(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="recipe YAML with a validation split")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override KEY=VALUE")] = None,
    n_trials: Annotated[
        int | None,
        typer.Option(
            "--n-trials", min=1, help="trials the study should hold (default: tune.trials)"
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(min=0, help="seconds after which no new trial starts (running ones finish)"),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            min=1,
            help="worker processes running trials side by side (each on train.device, sharing "
            "this machine's cores)",
        ),
    ] = 1,
    study_dir: Annotated[
        Path | None,
        typer.Option(help="where the study lives (default: <output.dir>/<name>-tune)"),
    ] = None,
) -> None:
    """Search the recipe's `tune.space` with Optuna (TPE, median pruning), each trial a run
    scored on the validation split; the test split is never read. The study is kept in
    <study-dir>/study.db: run the same command again to continue it. Writes best.yaml (the
    recipe with the best trial's values: `crossdistill run` it), study.json, study.md and the
    study's plots. Needs Optuna (the `tune` extra).
    """
    from crossdistill.config import load_recipe
    from crossdistill.tune import default_study_dir, tune_recipe

    set_ = overrides(set_, ctx.args)
    spec = load_recipe(recipe, set_)
    folder = study_dir if study_dir is not None else default_study_dir(spec)
    options = [*(["--n-trials", str(n_trials)] if n_trials else [])]
    options += [*(["--jobs", str(jobs)] if jobs > 1 else [])]
    options += [*(["--study-dir", str(study_dir)] if study_dir is not None else [])]
    again = command_line("tune", recipe, set_, *options)
    on_interrupt(
        lambda: (
            f"the study in {folder} keeps its finished trials (the one running is run "
            f"again); continue with: {again}"
        )
    )
    result = tune_recipe(
        spec,
        n_trials=n_trials,
        timeout=timeout,
        jobs=jobs,
        study_dir=folder,
        imports=state["imports"],
    )
    summary = result.summary
    metric = summary["metric"]
    shown: dict[str, object] = {f"{k} trials": v for k, v in summary["counts"].items() if v}
    if result.best is not None:
        shown |= {"best trial": result.best["number"], f"best {metric} (val)": result.best["value"]}
    baseline = summary.get("baseline")
    if isinstance(baseline, dict) and baseline.get("value") is not None:
        shown[f"baseline {metric} (val)"] = baseline["value"]
    print_metrics(shown, f"study {folder}")
    if result.best_recipe is None:
        from crossdistill.errors import CrossDistillError

        raise CrossDistillError(
            "no trial completed: there is no best recipe to write",
            hint=f"see {folder / 'study.json'} for what each trial did",
        )
    typer.echo(str(result.best_recipe))
