"""Born-again generations (crossdistill.generations): generation 0 from the labels when there is
no teacher, each teacher the previous student's weights, generations.json and the ensemble
against a hand computation, resume after an interruption, the CLI option, and the errors
before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import same_tensors, tree_hashes
from crossdistill import load_student
from crossdistill.build import build_teacher
from crossdistill.config import Recipe, load_recipe
from crossdistill.core.wrappers import EnsembleTeacher
from crossdistill.errors import CheckpointError, ConfigError
from crossdistill.generations import ENSEMBLE_FILE, RECIPE_FILE, SUMMARY_FILE, run_generations
from crossdistill.pipeline import run_recipe
from crossdistill.runs import Run, last_checkpoint
from crossdistill.train.trainer import Trainer

# a CNN of ~500 parameters on 128 digits: each generation trains in well under a second
TINY = """\
name: born
seed: 0
data: {source: digits, batch_size: 16, limit_train: 128, limit_eval: 96}
student:
  model: cnn
  params: {in_channels: 1, num_classes: 10, width: 2}
  pipeline: [{name: normalize, params: {mean: [0.3053], std: [0.3759]}}]
losses:
  - {name: ce, weight: 0.5}
  - {name: kd, weight: 0.5, params: {temperature: 4.0}}
train: {epochs: 2, optimizer: {name: sgd, lr: 0.1}, progress: false, device: cpu}
"""


def _recipe(folder: Path, *overrides: str, text: str = TINY) -> Recipe:
    path = folder / "born.yaml"
    path.write_text(text)
    return load_recipe(path, [f"output.dir={folder / 'runs'}", *overrides])


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three generations of a recipe without a teacher (gen0..gen3), trained once."""
    recipe = _recipe(tmp_path_factory.mktemp("three"), "generations=3")
    result = run_recipe(recipe)
    assert result.run_dir == recipe.run_dir / "gen3"
    return recipe.run_dir


# ------------------------------------------------------------------------------ the runs


def test_without_a_teacher_generation_0_learns_from_the_labels(three: Path) -> None:
    assert sorted(p.name for p in three.iterdir()) == [
        ENSEMBLE_FILE, "gen0", "gen1", "gen2", "gen3", SUMMARY_FILE, RECIPE_FILE,
    ]  # fmt: skip
    with pytest.raises(CheckpointError, match="not a run directory") as refused:
        Run.open(three)  # the folder is not a run (not an unfinished one either); each genK is
    assert refused.value.hint == (
        f"it holds several runs (gen0, gen1, gen2, gen3): pass one, e.g. {three / 'gen3'}"
    )
    assert all(Run.open(three / f"gen{k}").finished for k in range(4))
    gen0 = Run(three / "gen0").config
    assert gen0.teacher is None and gen0.generations == 1
    # the terms that read no teacher, their weights summing to the recipe's total
    assert [(loss.name, loss.weight) for loss in gen0.losses] == [("ce", 1.0)]
    for k in (1, 2, 3):
        config = Run(three / f"gen{k}").config
        assert config.teacher is not None
        assert config.teacher.weights == three / f"gen{k - 1}" / "student.safetensors"
        assert [loss.name for loss in config.losses] == ["ce", "kd"]
        assert config.seed == 0  # every generation: the recipe's seed
    assert load_recipe(three / RECIPE_FILE).generations == 3


def test_each_teacher_is_the_previous_generations_student(three: Path) -> None:
    for k in (1, 2, 3):
        teacher = Run(three / f"gen{k}").teacher()
        assert teacher is not None
        mine = teacher.model.state_dict()
        before = load_file(three / f"gen{k - 1}" / "student.safetensors")
        assert mine.keys() == before.keys()
        assert all(torch.equal(mine[key], before[key]) for key in before)
        own = load_file(three / f"gen{k}" / "student.safetensors")
        assert any(not torch.equal(own[key], before[key]) for key in before)  # it trained


def test_generations_json_holds_every_generation(three: Path) -> None:
    summary = json.loads((three / SUMMARY_FILE).read_text())
    assert summary["finished"] is True
    assert [g["generation"] for g in summary["generations"]] == [0, 1, 2, 3]
    assert [g["teacher"] for g in summary["generations"]] == [None, "gen0", "gen1", "gen2"]
    for entry in summary["generations"]:
        assert entry["metrics"] == Run(three / entry["run"]).final_metrics()
        assert 0.0 <= entry["metrics"]["accuracy"] <= 1.0
    assert summary["ensemble"]["members"] == ["gen1", "gen2", "gen3"]


def _mean_logits(three: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of generations 1..3's logits on the test split, and its labels, by hand."""
    students = [load_student(three / f"gen{k}").eval() for k in (1, 2, 3)]
    logits, targets = [], []
    with torch.no_grad():
        for batch in Run(three / "gen3").eval_data(split="test"):
            x = batch["views"]["student"]
            logits.append(sum(s(x)["logits"] for s in students) / len(students))
            targets.append(batch["target"])
    return torch.cat(logits), torch.cat(targets)


def test_the_ensemble_is_evaluated_as_the_mean_of_the_generations(three: Path) -> None:
    ensemble = json.loads((three / SUMMARY_FILE).read_text())["ensemble"]["metrics"]
    logits, targets = _mean_logits(three)
    assert ensemble["split"] == "test" and len(targets) == 96  # limit_eval
    accuracy = (logits.argmax(1) == targets).sum().item() / len(targets)
    assert ensemble["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    top5 = (logits.topk(5, dim=1).indices == targets[:, None]).any(1).sum().item() / len(targets)
    assert ensemble["top5_accuracy"] == pytest.approx(top5, abs=1e-9)


def test_the_ensemble_teacher_file_makes_a_teacher_of_the_mean(three: Path, tmp_path: Path) -> None:
    section = yaml.safe_load((three / ENSEMBLE_FILE).read_text())
    raw = yaml.safe_load(TINY)
    raw["teacher"] = section["teacher"]
    path = tmp_path / "from_ensemble.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe = load_recipe(path)  # the section validates in a recipe
    teacher = build_teacher(recipe.teacher)  # type: ignore[arg-type]
    assert isinstance(teacher, EnsembleTeacher) and len(teacher.members) == 3
    students = [load_student(three / f"gen{k}").eval() for k in (1, 2, 3)]
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        expected = sum(s(x)["logits"] for s in students) / 3
    torch.testing.assert_close(teacher(x)["logits"], expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ resume


def test_an_interrupted_run_resumes_to_the_same_weights(
    three: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(tmp_path, "generations=3")
    top = recipe.run_dir
    train_epoch = Trainer._train_epoch

    def crash_in_gen2s_second_epoch(self: Trainer, *args: object) -> float:
        if self.run is not None and self.run.path.name == "gen2" and self.epoch == 1:
            raise RuntimeError("interrupted")
        return train_epoch(self, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_gen2s_second_epoch)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_recipe(recipe)
    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    assert Run(top / "gen1").finished and not Run(top / "gen2").finished
    assert Run(top / "gen2").checkpoint_list()  # its first epoch, kept to resume from
    assert json.loads((top / SUMMARY_FILE).read_text())["finished"] is False
    before = {k: tree_hashes(top / f"gen{k}") for k in (0, 1)}

    result = run_recipe(recipe, resume=True)
    assert {k: tree_hashes(top / f"gen{k}") for k in (0, 1)} == before  # reused, not retrained
    log = (top / "gen2" / "metrics.jsonl").read_text()
    assert '"kind": "resume"' in log
    for k in (2, 3):  # the same weights as the run that was never interrupted
        assert same_tensors(
            top / f"gen{k}" / "student.safetensors", three / f"gen{k}" / "student.safetensors"
        )
    assert result.run_dir == top / "gen3"
    assert json.loads((top / SUMMARY_FILE).read_text())["finished"] is True

    # once finished, a resume trains nothing: every generation is reused
    done = {k: tree_hashes(top / f"gen{k}") for k in range(4)}
    again = run_recipe(recipe, resume=True)
    assert {k: tree_hashes(top / f"gen{k}") for k in range(4)} == done
    assert (
        again.history.train_loss == [] and again.metrics["accuracy"] == result.metrics["accuracy"]
    )
    assert same_tensors(
        top / "gen3" / "student.safetensors", three / "gen3" / "student.safetensors"
    )


def test_resume_refuses_generations_of_another_recipe(three: Path, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "generations=3", "seed=1")
    moved = recipe.model_copy(
        update={"output": recipe.output.model_copy(update={"dir": three.parent})}
    )
    with pytest.raises(CheckpointError, match="different recipe"):
        run_generations(moved, resume=True)
    with pytest.raises(ConfigError, match="already exists"):
        run_generations(moved)


def test_the_last_checkpoint_of_generations_is_the_last_generations(three: Path) -> None:
    """What an interrupted ``crossdistill run`` names for the resume: the newest checkpoint of
    the runs inside the folder (there are none at its top)."""
    assert last_checkpoint(three) == Run(three / "gen3").checkpoint_list()[-1]
    assert last_checkpoint(three / "gen1") == Run(three / "gen1").checkpoint_list()[-1]
    assert last_checkpoint(three / "nothing") is None


def test_resume_with_fewer_generations_keeps_the_folder(three: Path) -> None:
    """A resume asking for fewer generations than the folder holds is refused, not left with
    a stale gen3 beside a summary of two."""
    recipe = load_recipe(three / "recipe.yaml", ["generations=2"])
    before = tree_hashes(three)
    with pytest.raises(CheckpointError, match=r"up to 3, and this recipe asks for 2"):
        run_generations(recipe, resume=True)
    assert tree_hashes(three) == before


# ------------------------------------------------------------------------------ a teacher


def test_a_recipes_teacher_teaches_generation_1(tmp_path: Path) -> None:
    """With a teacher there is no generation 0; --overwrite empties the folder first."""
    recipe = _recipe(
        tmp_path,
        "generations=2",
        "teacher={model: cnn, params: {in_channels: 1, num_classes: 10, width: 3}}",
    )
    recipe.run_dir.mkdir(parents=True)
    (recipe.run_dir / "old.txt").write_text("from an earlier run")
    result = run_generations(recipe, overwrite=True)
    assert sorted(p.name for p in recipe.run_dir.iterdir() if p.is_dir()) == ["gen1", "gen2"]
    assert not (recipe.run_dir / "old.txt").exists()
    gen1 = Run(recipe.run_dir / "gen1").config
    assert gen1.teacher == recipe.teacher
    assert [g["teacher"] for g in result.metrics["generations"]] == ["teacher", "gen1"]
    assert result.metrics["ensemble"]["members"] == ["gen1", "gen2"]
    assert "agreement" in result.metrics  # the last generation against its teacher

    # a resume with more generations keeps the finished ones and trains the new one
    done = {k: tree_hashes(recipe.run_dir / f"gen{k}") for k in (1, 2)}
    more = run_generations(recipe.model_copy(update={"generations": 3}), resume=True)
    assert {k: tree_hashes(recipe.run_dir / f"gen{k}") for k in (1, 2)} == done
    assert more.run_dir == recipe.run_dir / "gen3" and more.history.train_loss
    assert more.metrics["ensemble"]["members"] == ["gen1", "gen2", "gen3"]


def test_an_embedding_students_ensemble_is_kept_unscored(tmp_path: Path) -> None:
    """Embedding students are scored against their teacher; the ensemble has none: its
    generations and its teacher file are kept, and generations.json says why it has no score."""
    recipe = _recipe(
        tmp_path,
        "generations=2",
        "train.epochs=1",
        "student.outputs=[embedding]",
        "teacher={model: cnn, params: {in_channels: 1, num_classes: 10, width: 3}, "
        "outputs: [embedding]}",
        "losses=[{name: cosine}]",
    )
    result = run_generations(recipe)
    assert "cosine" in result.metrics  # each generation against its teacher
    ensemble = json.loads((recipe.run_dir / SUMMARY_FILE).read_text())["ensemble"]
    assert "teacher's embeddings" in ensemble["metrics"]["not_evaluated"]
    assert (recipe.run_dir / ENSEMBLE_FILE).is_file()


# ------------------------------------------------------------------------------ bad input


def test_generations_0_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"generations: Input should be greater than 0"):
        _recipe(tmp_path, "generations=0")


def test_a_recipe_whose_every_term_reads_a_teacher_has_no_generation_0(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "generations=2", "losses=[{name: kd}]")
    with pytest.raises(ConfigError, match="generation 0 from the labels"):
        run_recipe(recipe)
    assert not recipe.run_dir.exists()  # refused before anything is written


def test_a_teacher_key_a_student_does_not_emit_is_refused_before_training(tmp_path: Path) -> None:
    recipe = _recipe(
        tmp_path, "generations=2", "losses=[{name: ce}, {name: kd, params: {teacher: soft}}]"
    )
    with pytest.raises(ConfigError, match=r"reads \['soft'\] from the teacher"):
        run_recipe(recipe)
    assert not recipe.run_dir.exists()


# ------------------------------------------------------------------------------ the CLI


def test_the_cli_option_runs_generations(tmp_path: Path, forked_cli) -> None:
    (tmp_path / "born.yaml").write_text(TINY)
    args = ["run", "born.yaml", "--set", "train.epochs=1"]
    refused = forked_cli([*args, "--generations", "0"], cwd=tmp_path)
    assert refused.returncode != 0 and "generations" in refused.stderr
    assert not (tmp_path / "runs").exists()
    done = forked_cli([*args, "--generations", "2"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    top = tmp_path / "runs" / "born"
    assert done.stdout.strip().splitlines()[-1] == str(Path("runs") / "born" / "gen2")
    assert all(Run(top / f"gen{k}").finished for k in (0, 1, 2))
    assert load_recipe(top / RECIPE_FILE).generations == 2


def test_a_first_generation_refused_on_its_data_leaves_no_folder(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "generations=2", "student.params.in_channels=3")
    with pytest.raises(Exception, match="channels"):
        run_recipe(recipe)
    assert not recipe.run_dir.exists()  # so a corrected rerun is not "already exists"


def test_run_or_reuse_trains_what_is_missing_and_then_reuses_it(tmp_path: Path) -> None:
    """What the benchmarks call: a new folder is trained, a finished one is left as it is."""
    from crossdistill.pipeline import run_or_reuse

    recipe = _recipe(tmp_path, "generations=2")
    top = run_or_reuse(recipe)
    assert top == recipe.run_dir and (top / SUMMARY_FILE).is_file()
    before = tree_hashes(top)
    assert run_or_reuse(recipe) == top
    assert tree_hashes(top) == before


def test_a_users_own_model_by_import_path_resumes_without_allow_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished folder resumed: the last generation, reused, is read back from the recipe's
    own model spec (the user's: no --allow-import needed, as when it trained)."""
    (tmp_path / "own_net_g.py").write_text(
        "from torch import nn\n\n\ndef make(width: int = 8) -> nn.Module:\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.Linear(width, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = _recipe(
        tmp_path, "generations=2", "student={model: 'own_net_g:make', params: {width: 8}}"
    )
    run_recipe(recipe)
    before = tree_hashes(recipe.run_dir / "gen2")
    result = run_recipe(recipe, resume=True)
    assert tree_hashes(recipe.run_dir / "gen2") == before  # reused, not retrained
    assert isinstance(result.student, torch.nn.Sequential)
