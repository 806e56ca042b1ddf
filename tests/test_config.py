"""Recipes: loading, ``--set`` overrides, validation messages, the fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from crossdistill.config import (
    Recipe,
    TeacherSpec,
    apply_override,
    dump_recipe,
    load_recipe,
    validate_recipe,
)
from crossdistill.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ALL_RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
KD = ROOT / "recipes" / "digits" / "kd.yaml"


def _raw(path: Path = KD) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _write(tmp_path: Path, raw: dict[str, Any] | str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


# ------------------------------------------------------------------------------- loading


def test_recipes_are_found() -> None:
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in ALL_RECIPES}
    assert {"digits/teacher.yaml", "digits/kd.yaml", "fashion_mnist/kd.yaml"} <= names


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.losses and recipe.train.epochs >= 1


def test_digits_recipes_are_what_the_tests_expect() -> None:
    teacher = load_recipe(ROOT / "recipes" / "digits" / "teacher.yaml")
    kd = load_recipe(KD)
    assert teacher.name == "digits_teacher" and kd.name == "digits_kd"
    assert teacher.data.source == kd.data.source == "digits"
    assert teacher.student.model == "cnn" and teacher.student.params["width"] == 16
    assert kd.teacher is not None and kd.teacher.params == teacher.student.params
    assert kd.teacher.weights == Path("runs/digits_teacher/student.safetensors")
    assert kd.teacher.pipeline == teacher.student.pipeline == kd.student.pipeline
    assert kd.student.params["width"] == 4
    assert [(s.name, s.weight) for s in kd.losses] == [("ce", 0.5), ("kd", 0.5)]
    assert kd.losses[1].params == {"temperature": 4.0}


@pytest.mark.parametrize("name", ["teacher.yaml", "kd.yaml"])
def test_digits_recipes_say_how_to_run_them(name: str) -> None:
    header = (ROOT / "recipes" / "digits" / name).read_text().split("\nname:")[0]
    assert f"crossdistill run recipes/digits/{name}" in header


def test_digits_normalisation_matches_the_data() -> None:
    from crossdistill.data.sources.digits import _load_all

    images = _load_all()[0] / 255.0
    for path in (ROOT / "recipes" / "digits").glob("*.yaml"):
        (step,) = load_recipe(path).student.pipeline
        assert step.params["mean"][0] == pytest.approx(images.mean(), abs=1e-3)
        assert step.params["std"][0] == pytest.approx(images.std(), abs=1e-3)


# ------------------------------------------------------------------------------- overrides


def test_overrides_nested_and_typed() -> None:
    recipe = load_recipe(
        KD,
        overrides=[
            "train.epochs=7",
            "train.optimizer.lr=0.25",
            "train.optimizer.nesterov=false",
            "train.progress=no",
            "seed=11",
            "data.params.test_fraction=0.3",
            "teacher.params.width=32",
        ],
    )
    assert recipe.train.epochs == 7
    assert recipe.train.optimizer.lr == 0.25
    assert recipe.train.optimizer.nesterov is False
    assert recipe.train.progress is False
    assert recipe.seed == 11
    assert recipe.data.params == {"test_fraction": 0.3}
    assert recipe.teacher is not None and recipe.teacher.params["width"] == 32
    assert isinstance(recipe.teacher.params["width"], int)


def test_override_list_index() -> None:
    recipe = load_recipe(KD, overrides=["losses.1.weight=2", "losses.1.params.temperature=8"])
    assert recipe.losses[1].weight == 2.0 and recipe.losses[1].params["temperature"] == 8
    assert recipe.losses[0].weight == 0.5


def test_override_value_types() -> None:
    raw: dict[str, Any] = {}
    for item in [
        "i=3",
        "f=0.5",
        "e=1.0e-3",
        "b=true",
        "n=null",
        "s=hello",
        "l=[1, 2.5, x]",
        "d={a: 1}",
        "path=/tmp/x.safetensors",
        "empty=",
    ]:
        apply_override(raw, item)
    assert raw == {
        "i": 3,
        "f": 0.5,
        "e": 1e-3,
        "b": True,
        "n": None,
        "s": "hello",
        "l": [1, 2.5, "x"],
        "d": {"a": 1},
        "path": "/tmp/x.safetensors",
        "empty": None,
    }
    assert type(raw["i"]) is int and type(raw["f"]) is float


def test_override_of_a_whole_list() -> None:
    recipe = load_recipe(KD, overrides=["losses=[{name: ce}]", "teacher.outputs=[logits]"])
    assert [s.name for s in recipe.losses] == ["ce"]


def test_override_exponent_without_dot_still_validates_as_float() -> None:
    # YAML 1.1 reads "1e-3" as a string; pydantic must still turn it into the float field.
    assert load_recipe(KD, overrides=["train.optimizer.lr=1e-3"]).train.optimizer.lr == 1e-3


@pytest.mark.parametrize(
    ("item", "phrase"),
    [
        ("train.epochs", "is not KEY=VALUE"),
        ("=3", "is not KEY=VALUE"),
        ("losses.5.weight=1", "'5' is not an index below 2"),
        ("losses.x.weight=1", "'x' is not an index below 2"),
        ("train.epochs.max=1", "train.epochs is a value, not a section"),
    ],
)
def test_bad_overrides(item: str, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        load_recipe(KD, overrides=[item])


def test_overrides_do_not_touch_the_file() -> None:
    before = KD.read_bytes()
    load_recipe(KD, overrides=["train.epochs=9"])
    assert KD.read_bytes() == before


# ------------------------------------------------------------------------------- validation


def test_unknown_key_names_the_path_and_suggests(tmp_path: Path) -> None:
    raw = _raw()
    raw["train"]["epochz"] = 3
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    text = str(info.value)
    assert str(path) in text
    assert "train.epochz: unknown key; did you mean epochs?" in text
    assert "grad_clip" in text  # the known keys are listed


def test_unknown_key_in_a_list_item(tmp_path: Path) -> None:
    raw = _raw()
    raw["losses"][1]["wieght"] = 2
    with pytest.raises(ConfigError, match=r"losses\[1\]\.wieght: unknown key; did you mean weight"):
        load_recipe(_write(tmp_path, raw))


def test_unknown_top_level_key() -> None:
    with pytest.raises(ConfigError, match="studnet: unknown key; did you mean student"):
        load_recipe(KD, overrides=["studnet.model=cnn"])


def test_unknown_key_in_the_teacher() -> None:
    with pytest.raises(ConfigError, match=r"teacher\.weigths: unknown key; did you mean weights"):
        load_recipe(KD, overrides=["teacher.weigths=x.safetensors"])


def test_wrong_type_names_the_path(tmp_path: Path) -> None:
    raw = _raw()
    raw["train"]["epochs"] = "ten"
    with pytest.raises(ConfigError) as info:
        load_recipe(_write(tmp_path, raw))
    assert "train.epochs:" in str(info.value)
    assert "'ten'" in str(info.value)


@pytest.mark.parametrize(
    ("item", "path"),
    [
        ("train.epochs=0", "train.epochs"),
        ("train.optimizer.lr=-1", "train.optimizer.lr"),
        ("train.optimizer.name=adam", "train.optimizer.name"),
        ("losses.0.weight=-0.5", "losses[0].weight"),
        ("data.batch_size=many", "data.batch_size"),
        ("name=has space", "name"),
    ],
)
def test_invalid_values_name_their_path(item: str, path: str) -> None:
    with pytest.raises(ConfigError, match="is not a valid recipe") as info:
        load_recipe(KD, overrides=[item])
    assert f"  {path}:" in str(info.value)


def test_missing_required_section() -> None:
    raw = _raw()
    del raw["student"]
    with pytest.raises(ConfigError, match="student: required but missing"):
        validate_recipe(raw)


def test_duplicate_loss_terms_need_a_label() -> None:
    raw = _raw()
    raw["losses"].append({"name": "kd", "params": {"temperature": 1.0}})
    with pytest.raises(ConfigError, match=r"\['kd'\] appear twice") as info:
        validate_recipe(raw)
    assert "label" in str(info.value)
    raw["losses"][-1]["label"] = "kd_t1"
    recipe = validate_recipe(raw)
    assert [s.term for s in recipe.losses] == ["ce", "kd", "kd_t1"]


def test_teacher_needs_model_xor_members() -> None:
    member = {"model": "cnn", "params": {"width": 4}}
    assert TeacherSpec(model="cnn").model == "cnn"
    assert len(TeacherSpec(members=[member, member], member_weights=[1, 2]).members) == 2
    for bad in ({}, {"model": "cnn", "members": [member]}):
        raw = _raw()
        raw["teacher"] = bad
        with pytest.raises(ConfigError, match="give exactly one of `model:`") as info:
            validate_recipe(raw)
        assert "teacher" in str(info.value)


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_recipe(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_changes_with_any_value(tmp_path: Path) -> None:
    base = load_recipe(KD)
    assert base.fingerprint() == load_recipe(KD).fingerprint()
    assert len(base.fingerprint()) == 16
    for item in [
        "seed=1",
        "train.epochs=4",
        "losses.1.params.temperature=2",
        "train.optimizer.lr=0.2",
        "student.params.width=8",
        "data.batch_size=32",
    ]:
        assert load_recipe(KD, overrides=[item]).fingerprint() != base.fingerprint(), item


def test_dump_and_reload_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe(KD, overrides=["train.epochs=2", "losses.1.label=soft"])
    dump_recipe(recipe, tmp_path / "config.yaml")
    again = load_recipe(tmp_path / "config.yaml")
    assert again == recipe
    assert again.fingerprint() == recipe.fingerprint()
