"""Recipes at their limits (issue 20): YAML that would silently drop or explode values, run names
that leave the output folder, numbers out of range, devices this machine lacks.

Each is one clear :class:`ConfigError` naming the YAML path (or file:line) and a hint. The same
cases through the command line (exit code 2, no traceback, nothing written) are in
tests/test_bad_inputs.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from crossdistill._util.device import available_devices, select_device
from crossdistill._util.validation import short_repr
from crossdistill.config import (
    NAME_MAX,
    SEED_MAX,
    apply_override,
    dump_recipe,
    load_recipe,
    validate_recipe,
)
from crossdistill.errors import ConfigError
from crossdistill.models.registry import MODELS
from crossdistill.pipeline import run_recipe
from crossdistill.report.data import load_run

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "recipes" / "digits"
TEACHER = DIGITS / "teacher.yaml"
KD = DIGITS / "kd.yaml"


def _raw(path: Path = KD) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _error(overrides: list[str], path: Path = KD) -> str:
    """The message (with hint) of the ConfigError that ``overrides`` of ``path`` raise."""
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overrides)
    assert info.value.hint, str(info.value)
    return str(info.value)


# A "billion laughs": nine lines that expand to 9**8 strings when anything walks them.
LAUGHS = """name: laughs
data: {source: digits}
student:
  model: cnn
  params:
    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
losses: [{name: ce}]
"""


# ------------------------------------------------------------------------------- YAML


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    text = TEACHER.read_text()
    assert "\ntrain:\n" in text
    path = tmp_path / "dup.yaml"
    path.write_text(text + "\ntrain:\n  epochs: 1\n")
    first = text.split("\n").index("train:") + 1
    second = len(text.split("\n")) + 1
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert info.value.message == (
        f"{path}:{second}: key 'train' appears twice in one mapping (lines {first} and {second})"
    )
    assert "later" in (info.value.hint or "")


def test_duplicate_nested_key(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 3\n  seed: 1\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:5: key 'epochs' appears twice .*3 and 5"):
        load_recipe(path)


def test_billion_laughs_is_refused_at_its_first_anchor(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert info.value.message == f"{path}:6: YAML anchor &a is not allowed in a recipe"
    assert "write the value out" in (info.value.hint or "")


def test_an_alias_alone_is_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "alias.yaml"
    path.write_text("name: x\nseed: *s\n")
    with pytest.raises(ConfigError, match="is not valid YAML: found undefined alias"):
        load_recipe(path)


def test_set_values_still_parse() -> None:
    raw: dict[str, Any] = {}
    for item in [
        "l=[1, 2.5, x]",
        "d={a: 1, b: [2, 3]}",
        "f=1e-3",
        "glob=*png",  # an alias token that names nothing: the text it was, as before
        "amp=a&b",
        "n=null",
    ]:
        apply_override(raw, item)
    assert raw == {
        "l": [1, 2.5, "x"],
        "d": {"a": 1, "b": [2, 3]},
        "f": "1e-3",
        "glob": "*png",
        "amp": "a&b",
        "n": None,
    }
    recipe = load_recipe(KD, ["student.params={width: 8}", "train.optimizer.lr=1e-3"])
    assert recipe.student.params == {"width": 8} and recipe.train.optimizer.lr == 1e-3


@pytest.mark.parametrize(
    ("item", "phrase"),
    [
        ("student.params={a: &x [1, 2], b: *x}", "YAML anchor &x is not allowed"),
        ("student.params={width: 8, width: 16}", "key 'width' appears twice"),
    ],
)
def test_set_values_refuse_anchors_and_duplicates(item: str, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase) as info:
        load_recipe(KD, [item])
    assert info.value.hint


def test_dump_never_writes_anchors(tmp_path: Path) -> None:
    """A value shared in two places (possible from Python) is written out twice (model_dump
    copies it), so the run's config.yaml reads back under the no-anchor loader."""
    shared = [1, 2, 3]
    raw = _raw()
    raw["student"]["params"] = {"width": 4, "a": shared, "b": shared}
    recipe = validate_recipe(raw)
    dump_recipe(recipe, tmp_path / "config.yaml")
    assert "&" not in (tmp_path / "config.yaml").read_text()
    assert load_recipe(tmp_path / "config.yaml") == recipe


def test_report_reads_a_run_config_without_expanding_it(tmp_path: Path) -> None:
    """A run folder is data: its config.yaml is read by the same loader (anchors refused)."""
    (tmp_path / "config.yaml").write_text(LAUGHS)
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "epoch": 1}\n')
    run = load_run(tmp_path)
    assert run.config == {}
    assert run.config_text == LAUGHS
    assert any("config.yaml" in note for note in run.notes)


# ------------------------------------------------------------------------------- messages


def _shared(depth: int) -> list[Any]:
    """Nested lists sharing their parts: 9**depth leaves, 9 * depth objects."""
    value: list[Any] = ["lol"] * 9
    for _ in range(depth):
        value = [value] * 9
    return value


@pytest.mark.parametrize("value", ["x" * 100_000, _shared(6)], ids=["long-string", "shared-lists"])
def test_validation_messages_cut_the_values_they_print(value: Any) -> None:
    raw = _raw()
    raw["train"]["epochs"] = value
    with pytest.raises(ConfigError) as info:
        validate_recipe(raw)
    message = info.value.message
    assert "train.epochs:" in message
    assert len(message) < 600 and "…" in message


def test_plugin_build_errors_cut_the_params_they_print() -> None:
    def factory(payload: Any = None) -> torch.nn.Module:
        raise RuntimeError("refused")

    with pytest.raises(ConfigError) as info:
        MODELS.build(factory, {"payload": "x" * 100_000}, "student")
    assert "cannot build model" in info.value.message and "refused" in info.value.message
    assert len(info.value.message) < 600


def test_short_repr() -> None:
    assert short_repr("ten") == "'ten'" and short_repr(0) == "0"
    assert short_repr({"b": 1, "a": 2}) == "{'b': 1, 'a': 2}"  # the mapping's own order
    assert len(short_repr(_shared(30))) == 200  # 9**30 leaves, never walked


# ------------------------------------------------------------------------------- run names


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "cannot be empty"),
        (".", "'.' is not a run name"),
        ("..", "'..' is not a run name"),
        ("a/b", "without '/'"),
        ("../escape", "without '/'"),
        ("a\\b", "without '/' or '\\'"),
        ("a\x00b", "only letters, digits"),
        ("tab\there", "only letters, digits"),
        ("n" * (NAME_MAX + 1), f"at most {NAME_MAX} characters, this one {NAME_MAX + 1}"),
    ],
    ids=["empty", "dot", "dotdot", "slash", "parent", "backslash", "nul", "tab", "101"],
)
def test_run_name_is_one_folder_name(name: str, rule: str) -> None:
    message = _error([f"name={json.dumps(name)}"])
    assert "  name: " in message and rule in message
    assert "--name NEW" in message  # the hint


@pytest.mark.parametrize("name", ["n" * NAME_MAX, "kd.v2-final_1", ".hidden"])
def test_good_run_names(name: str) -> None:
    assert load_recipe(KD, [f"name={json.dumps(name)}"]).name == name


def test_run_dir_stays_inside_the_output_folder(tmp_path: Path) -> None:
    """A link named like the run, leading out of output.dir, is refused before anything is
    written through it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "runs"
    out.mkdir()
    (out / "linked").symlink_to(elsewhere)
    recipe = load_recipe(TEACHER, [f"output.dir={out}", "name=linked", "train.progress=false"])
    with pytest.raises(ConfigError, match=r"leads outside output\.dir"):
        _ = recipe.run_dir
    with pytest.raises(ConfigError, match=r"leads outside output\.dir"):
        run_recipe(recipe)
    assert not any(elsewhere.iterdir())
    plain = load_recipe(TEACHER, [f"output.dir={out}", "name=plain"])
    assert plain.run_dir == out / "plain"


# ------------------------------------------------------------------------------- ranges


@pytest.mark.parametrize("seed", ["-1", str(SEED_MAX + 1), "1.5", "1.0e+23"])
def test_seed_out_of_range_names_its_path_and_range(seed: str) -> None:
    message = _error([f"seed={seed}"])
    assert "  seed: " in message and "allowed: 0..4294967295" in message
    assert "--set" in message  # the hint


@pytest.mark.parametrize("seed", [0, SEED_MAX])
def test_seed_at_its_bounds(seed: int) -> None:
    assert load_recipe(KD, [f"seed={seed}"]).seed == seed


# fmt: off
RANGES = [
    ("data.batch_size=0", "data.batch_size", "allowed: 1..16777216"),
    ("data.batch_size=16777217", "data.batch_size", "allowed: 1..16777216"),
    ("data.batch_size=1.0e+20", "data.batch_size", "allowed: 1..16777216"),
    ("data.eval_batch_size=1.0e+20", "data.eval_batch_size", "allowed: 1..16777216"),
    ("data.num_workers=-1", "data.num_workers", "allowed: 0..1024"),
    ("data.limit_train=0", "data.limit_train", "greater than 0"),
    ("data.limit_eval=0", "data.limit_eval", "greater than 0"),
    ("data.augment_slots=0", "data.augment_slots", "allowed: 1..16777216"),
    ("train.epochs=0", "train.epochs", "greater than 0"),
    ("train.optimizer.lr=0", "train.optimizer.lr", "greater than 0"),
    ("train.optimizer.lr=.inf", "train.optimizer.lr", "finite number"),
    ("train.optimizer.lr=.nan", "train.optimizer.lr", "finite number"),
    ("train.optimizer.momentum=1", "train.optimizer.momentum", "allowed: >= 0 and < 1"),
    ("train.optimizer.weight_decay=.inf", "train.optimizer.weight_decay", "finite number"),
    ("train.optimizer.betas=[0.9, 1.5]", "train.optimizer.betas[1]", "less than 1"),
    ("train.schedule.warmup_epochs=.inf", "train.schedule.warmup_epochs", "finite number"),
    ("train.schedule.gamma=0", "train.schedule.gamma", "greater than 0"),
    ("train.grad_clip=0", "train.grad_clip", "greater than 0"),
    ("train.grad_clip=.inf", "train.grad_clip", "finite number"),
    ("losses.1.weight=-1", "losses[1].weight", "greater than or equal to 0"),
    ("losses.1.weight=.inf", "losses[1].weight", "finite number"),
    ("eval.topk=0", "eval.topk", "greater than 0"),
    ("store={path: s, shard_size: 0}", "store.shard_size", "allowed: 1..16777216"),
    ("store={path: s, batch_size: 0}", "store.batch_size", "allowed: 1..16777216"),
    ("store={path: s, keys: {logits: {format: topk, k: 0}}}", "store.keys.logits.k",
     "allowed: 1..16777216"),
    ("teacher.taps=[{name: t, path: block3, pool: 0}]", "teacher.taps[0].pool",
     "allowed: 1..16777216"),
    ("teacher.member_weights=[-1]", "teacher.member_weights[0]", "greater than or equal to 0"),
]
# fmt: on


@pytest.mark.parametrize(("item", "path", "phrase"), RANGES, ids=[r[0] for r in RANGES])
def test_numbers_out_of_range_name_their_path(item: str, path: str, phrase: str) -> None:
    message = _error([item])
    line = next((ln for ln in message.splitlines() if ln.startswith(f"  {path}: ")), None)
    assert line is not None, message
    assert phrase in line, line


def test_all_loss_weights_zero_is_refused() -> None:
    message = _error(["losses.0.weight=0", "losses.1.weight=0"])
    assert "  losses: every loss weight is 0" in message
    assert "weight above 0" in message  # the hint
    assert load_recipe(KD, ["losses.0.weight=0"]).losses[1].weight == 0.5  # one is enough


def test_a_bad_temperature_is_refused_by_the_loss() -> None:
    """Losses range-check their own hyper-parameters (one shared check); a run refuses a
    temperature of 0 before it writes anything."""
    from crossdistill.losses.registry import build_loss

    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        build_loss("kd", {"temperature": 0.0}, "losses[1]")


# ------------------------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["tpu9", "gpu", "cuda:x", "cuda:-1", "CPU", ""])
def test_device_name_is_checked_when_validating(device: str) -> None:
    message = _error([f"train.device={json.dumps(device)}"])
    assert "  train.device: not a device name" in message
    assert "auto, cpu, cuda, cuda:N or mps" in message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_device_names_that_validate(device: str) -> None:
    # whether this machine has it is checked when training starts
    assert load_recipe(KD, [f"train.device={device}"]).train.device == device


def test_a_device_this_machine_lacks_lists_those_it_has() -> None:
    have = available_devices()
    assert have[0] == "cpu"
    missing = [f"cuda:{torch.cuda.device_count()}", "tpu9"]
    if not torch.cuda.is_available():
        missing.append("cuda")
    for name in missing:
        with pytest.raises(ConfigError) as info:
            select_device(name)
        assert f"train.device is {name!r}, which is not available on this machine" in str(
            info.value
        )
        assert f"it has: {', '.join(have)}" in str(info.value)
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda")


def test_a_device_this_machine_lacks_writes_no_run(tmp_path: Path) -> None:
    missing = f"cuda:{torch.cuda.device_count()}"
    recipe = load_recipe(
        TEACHER,
        [f"output.dir={tmp_path / 'runs'}", f"train.device={missing}", "train.progress=false"],
    )
    with pytest.raises(ConfigError, match="which is not available on this machine"):
        run_recipe(recipe)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
