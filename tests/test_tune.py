"""``crossdistill tune``: an Optuna study over a recipe's settings that selects on the validation
split (the test split is never read), resumes from its SQLite file, prunes, and writes the best
recipe out. Trials are the digits KD recipe on a few hundred examples for one epoch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from crossdistill.cli import app
from crossdistill.config import Recipe, load_recipe, validate_recipe
from crossdistill.data import DATA_SOURCES
from crossdistill.data.split import Split
from crossdistill.errors import ConfigError
from crossdistill.report import write_report
from crossdistill.tune import auto_space, tune_recipe
from crossdistill.tune import study as study_module

LOADED: list[str] = []  # the splits the recording source below was asked for
SPACE = {
    "train.optimizer.lr": {"low": 0.02, "high": 0.5, "log": True},
    "losses.1.weight": {"low": 0.1, "high": 2.0},
    "losses.1.params.temperature": {"choices": [1.0, 4.0]},
}


def recording(split: str) -> Split:
    """The digits, remembering which split was loaded (a source by import path)."""
    LOADED.append(split)
    return DATA_SOURCES.build("digits", {}, "data", split=split)


def _tunable(kd_recipe: Recipe, tmp_path: Path, **tune: Any) -> Recipe:
    """The digits KD recipe, small and fast, with a validation split and a ``tune:`` section."""
    raw = kd_recipe.model_dump(mode="json")
    raw["data"].update(source=f"{__name__}:recording", params={}, validation=0.2, limit_train=200)
    raw["train"].update(epochs=1, device="cpu")
    raw["output"]["dir"] = str(tmp_path / "runs")
    raw["tune"] = {"space": SPACE, "baseline": False, **tune}
    return validate_recipe(raw)


def _study(folder: Path) -> Any:
    return optuna.load_study(study_name="crossdistill", storage=f"sqlite:///{folder / 'study.db'}")


def test_a_study_writes_the_best_recipe_and_never_reads_the_test_split(
    kd_recipe: Recipe, tmp_path: Path
) -> None:
    LOADED.clear()
    recipe = _tunable(kd_recipe, tmp_path, baseline=True)
    result = tune_recipe(recipe, n_trials=3, progress=False)
    folder = tmp_path / "runs" / "digits_kd-tune"
    assert result.study_dir == folder
    assert LOADED and set(LOADED) == {"train"}  # validation is carved from train; no test

    summary = json.loads((folder / "study.json").read_text())
    assert summary["metric"] == "accuracy" and summary["split"] == "validation"
    trials = summary["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert all(t["state"] == "complete" for t in trials)
    for t in trials:
        # the objective is the last (here: only) epoch's validation accuracy
        assert t["intermediate"] == {"1": t["value"]}
        config = yaml.safe_load((folder / t["run"] / "config.yaml").read_text())
        assert config["eval"]["test"] is False
        assert config["train"]["optimizer"]["lr"] == pytest.approx(
            t["params"]["train.optimizer.lr"]
        )
        assert config["losses"][1]["params"]["temperature"] in (1.0, 4.0)
        log = (folder / t["run"] / "metrics.jsonl").read_text().splitlines()
        evals = [json.loads(line) for line in log if '"eval"' in line]
        assert evals and {e.get("split") for e in evals} == {"val"}
    best = max(trials, key=lambda t: t["value"])
    assert summary["best"]["number"] == best["number"]
    assert summary["best"]["value"] == pytest.approx(best["value"])

    # the baseline: the student without the KD term, on the same validation split
    baseline = summary["baseline"]
    assert baseline["losses"] == ["ce"] and 0 <= baseline["value"] <= 1
    base_config = yaml.safe_load((folder / baseline["run"] / "config.yaml").read_text())
    assert [loss["name"] for loss in base_config["losses"]] == ["ce"]

    # best.yaml: a valid recipe carrying the best trial's values, its tune: section kept
    assert result.best_recipe == folder / "best.yaml"
    tuned = load_recipe(folder / "best.yaml")
    assert tuned.name == "digits_kd-tuned"
    assert tuned.train.optimizer.lr == pytest.approx(best["params"]["train.optimizer.lr"])
    assert tuned.losses[1].weight == pytest.approx(best["params"]["losses.1.weight"])
    assert tuned.losses[1].params["temperature"] == best["params"]["losses.1.params.temperature"]
    assert tuned.tune is not None and tuned.tune.space == recipe.tune.space
    assert tuned.eval.test is True and not tuned.train.callbacks  # a plain recipe to run
    assert tuned.data.validation == recipe.data.validation
    md = (folder / "study.md").read_text()
    assert "| trial | state | accuracy |" in md and "Baseline" in md
    assert (folder / "history.png").stat().st_size > 0
    assert (folder / "importance.png").stat().st_size > 0

    # `crossdistill report STUDY`: the baseline and the best trial, and the study's section
    page = write_report([folder], tensorboard=False).read_text()
    assert write_report([folder], tensorboard=False) == folder / "report.html"
    assert "Tuning study" in page and f"(trial {best['number']})" in page
    assert page.count("data:image/png") >= 2 and f"trial-{best['number']}" in page
    assert "baseline" in page


def test_a_rerun_continues_the_study_and_retries_a_trial_whose_process_died(
    kd_recipe: Recipe, tmp_path: Path
) -> None:
    recipe = _tunable(kd_recipe, tmp_path)
    tune_recipe(recipe, n_trials=1, progress=False)
    folder = tmp_path / "runs" / "digits_kd-tune"
    tune_recipe(recipe, n_trials=2, progress=False)  # the one finished counts: one more
    study = _study(folder)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    # the second run did not draw the first run's values again
    assert study.trials[1].params != study.trials[0].params

    # a trial left running by a process that no longer exists (killed, out of memory)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    lr = optuna.distributions.FloatDistribution(0.02, 0.5, log=True)
    orphan = study.ask({"train.optimizer.lr": lr})
    orphan.set_user_attr("pid", int(dead.stdout))
    orphan.set_user_attr("host", study_module.socket.gethostname())
    tune_recipe(recipe, n_trials=3, progress=False)
    states = {t.number: t.state.name for t in _study(folder).trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "FAIL", 3: "COMPLETE"}
    retry = _study(folder).trials[3]
    assert retry.user_attrs["retry_of"] == 2
    assert retry.params["train.optimizer.lr"] == orphan.params["train.optimizer.lr"]
    summary = json.loads((folder / "study.json").read_text())
    assert summary["counts"]["complete"] == 3 and summary["trials"][3]["retry_of"] == 2


def test_an_interrupted_trial_runs_again_with_the_same_values(
    kd_recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _tunable(kd_recipe, tmp_path)
    real = study_module.run_recipe

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module, "run_recipe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune_recipe(recipe, n_trials=1, progress=False)
    monkeypatch.setattr(study_module, "run_recipe", real)
    result = tune_recipe(recipe, n_trials=1, progress=False)
    trials = result.summary["trials"]
    assert [t["state"] for t in trials] == ["fail", "complete"]
    assert trials[1]["retry_of"] == 0 and trials[1]["params"] == trials[0]["params"]
    assert result.best["number"] == 1


def test_the_knowledge_store_is_written_once_and_read_by_every_trial(
    kd_recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _tunable(kd_recipe, tmp_path).model_dump(mode="json")
    raw["store"] = {"path": str(tmp_path / "store")}
    recipe = validate_recipe(raw)
    written: list[Path] = []
    real_cache = study_module.cache_recipe

    def cache(r: Recipe, **kwargs: Any) -> Path:
        written.append(real_cache(r, **kwargs))
        return written[-1]

    monkeypatch.setattr(study_module, "cache_recipe", cache)
    result = tune_recipe(recipe, n_trials=2, progress=False)
    assert written == [tmp_path / "store"]
    for t in result.summary["trials"]:
        assert t["state"] == "complete"
        config = yaml.safe_load((result.study_dir / t["run"] / "config.yaml").read_text())
        assert config["store"]["path"] == str(tmp_path / "store")


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: Any, trial: Any) -> bool:
        return True


def test_a_pruned_trial_stops_after_the_epoch_its_pruner_refused(
    kd_recipe: Recipe, tmp_path: Path
) -> None:
    recipe = _tunable(kd_recipe, tmp_path)
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"epochs": 3})})
    result = tune_recipe(recipe, n_trials=2, progress=False, pruner=AlwaysPrune())
    trials = result.summary["trials"]
    assert [t["state"] for t in trials] == ["pruned", "pruned"]
    folder = result.study_dir
    for t in trials:
        assert list(t["intermediate"]) == ["1"]  # stopped after the first of three epochs
        log = (folder / t["run"] / "metrics.jsonl").read_text()
        assert '"epoch": 2' not in log and '"kind": "error"' not in log
    assert result.best is None and result.best_recipe is None
    assert not (folder / "best.yaml").exists()


def test_median_pruning_stops_a_trial_below_the_median_of_earlier_ones(
    kd_recipe: Recipe, tmp_path: Path
) -> None:
    recipe = _tunable(kd_recipe, tmp_path)
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"epochs": 2})})
    tune_recipe(recipe, n_trials=0, progress=False)  # the study, empty
    folder = tmp_path / "runs" / "digits_kd-tune"
    study = _study(folder)
    # two earlier trials, perfect after epoch 1: anything real is below their median
    for _ in range(2):
        trial = study.ask()
        trial.report(1.0, step=1)
        study.tell(trial, 1.0)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    result = tune_recipe(recipe, n_trials=3, progress=False, pruner=pruner)
    last = result.summary["trials"][-1]
    assert last["number"] == 2 and last["state"] == "pruned"
    assert list(last["intermediate"]) == ["1"] and last["intermediate"]["1"] < 1.0


def test_errors_before_any_trial(kd_recipe: Recipe, tmp_path: Path) -> None:
    recipe = _tunable(kd_recipe, tmp_path)
    raw = recipe.model_dump(mode="json")
    no_val = validate_recipe({**raw, "data": {**raw["data"], "validation": None}})
    with pytest.raises(ConfigError, match=r"no validation split") as exc:
        tune_recipe(no_val, n_trials=1, progress=False)
    assert "--set data.validation=0.1" in exc.value.hint

    for key, why in [
        ("train.optimizer.lrr", "train.optimizer.lrr"),
        ("losses.1.params.temprature", "losses.1.params.temprature"),
        ("losses.5.weight", "losses.5.weight"),
        ("train.epochs", "train.epochs"),  # a key the recipe has, at a value it refuses
    ]:
        dim = {"low": -3.0, "high": 2.0} if key == "train.epochs" else {"low": 0.1, "high": 1.0}
        bad = {**raw, "tune": {**raw["tune"], "space": {key: dim}}}
        with pytest.raises(ConfigError, match=why.replace(".", r"\.")):
            tune_recipe(validate_recipe(bad), n_trials=1, progress=False)
    assert not (tmp_path / "runs" / "digits_kd-tune" / "trials").exists()  # nothing trained

    both = {
        **raw,
        "tune": {
            **raw["tune"],
            "space": {"losses.1.weight": {"choices": [0.5], "low": 0.1, "high": 1.0}},
        },
    }
    with pytest.raises(ConfigError, match=r"tune\.space") as exc:
        validate_recipe(both)
    assert "either `choices" in exc.value.message


def test_an_unknown_metric_stops_the_first_trial_naming_the_metrics_there_are(
    kd_recipe: Recipe, tmp_path: Path
) -> None:
    recipe = _tunable(kd_recipe, tmp_path, metric="acuracy")
    with pytest.raises(ConfigError, match="'acuracy'") as exc:
        tune_recipe(recipe, n_trials=2, progress=False)
    assert "accuracy" in exc.value.message and "macro_f1" in exc.value.message
    study = _study(tmp_path / "runs" / "digits_kd-tune")
    assert [t.state.name for t in study.trials] == ["FAIL"]  # trial 0, and no other


def test_without_optuna_the_error_says_what_to_install(
    kd_recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ConfigError, match="optuna") as exc:
        tune_recipe(_tunable(kd_recipe, tmp_path), n_trials=1, progress=False)
    assert exc.value.hint == "pip install 'crossdistill[tune]'"


def test_the_built_in_space_searches_the_teachers_terms_and_the_lr(kd_recipe: Recipe) -> None:
    space = auto_space(kd_recipe)  # losses: ce (0.5), kd (0.5, temperature 4), lr 0.1
    assert space["train.optimizer.lr"].low == pytest.approx(0.01)
    assert space["train.optimizer.lr"].high == pytest.approx(1.0)
    assert space["train.optimizer.lr"].log
    assert space["losses.1.weight"].low == pytest.approx(0.05)
    assert space["losses.1.weight"].high == pytest.approx(5.0)
    assert "losses.0.weight" not in space  # the supervised term sets the scale
    assert "losses.1.params.temperature" in space  # kd's own search_space
    # a scheduled temperature is set by training every step: searching it would change nothing
    raw = kd_recipe.model_dump(mode="json")
    raw["losses"][1]["schedule"] = {"temperature": {"start": 6, "end": 2}}
    scheduled = auto_space(validate_recipe(raw))
    assert "losses.1.params.temperature" not in scheduled and "losses.1.weight" in scheduled


def _recipe_file(kd_recipe: Recipe, tmp_path: Path) -> Path:
    raw = _tunable(kd_recipe, tmp_path).model_dump(mode="json")
    raw["data"]["source"] = "digits"  # a worker process has no test module to import
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_the_command_runs_a_study_and_prints_the_best_recipe(
    kd_recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe_file(kd_recipe, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the app appends the working folder
    runner = CliRunner()
    out = runner.invoke(app, ["tune", str(recipe), "--n-trials", "2", "--study-dir", "s"])
    assert out.exit_code == 0, out.output
    assert out.stdout.strip().splitlines()[-1] == str(Path("s") / "best.yaml")
    assert "trial 0: accuracy=" in out.stderr and "trial 1: accuracy=" in out.stderr
    assert "best accuracy" in out.stderr
    bad = runner.invoke(app, ["tune", str(recipe), "--set", "data.validation=null"])
    assert isinstance(bad.exception, ConfigError)
    assert "--set data.validation=0.1" in bad.exception.hint


@pytest.mark.slow
def test_jobs_share_one_study_and_start_exactly_the_budget(
    kd_recipe: Recipe, tmp_path: Path, cli: Any
) -> None:
    recipe = _recipe_file(kd_recipe, tmp_path)
    out = cli(
        ["tune", str(recipe), "--n-trials", "4", "--jobs", "2", "--study-dir", "s"], cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    study = _study(tmp_path / "s")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert len({t.user_attrs["pid"] for t in study.trials}) in (1, 2)  # worker processes
    summary = json.loads((tmp_path / "s" / "study.json").read_text())
    assert summary["best"] is not None and (tmp_path / "s" / "best.yaml").is_file()
