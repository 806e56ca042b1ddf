"""Peers (online / mutual distillation): terms read the models their ``sides`` name, a trainable
teacher side is detached unless told otherwise, each peer reads its own view, is evaluated,
checkpointed, resumed bit-identically, trained the same under DDP, and finished as a run of its
own that eval and export take; bad peer names and sides fail when the recipe is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from conftest import DIGITS, rewind_run, same_tensors
from crossdistill import Student
from crossdistill.config import Recipe, load_recipe
from crossdistill.core.distiller import Distiller, Term
from crossdistill.errors import ConfigError
from crossdistill.export import export_run
from crossdistill.losses import build_loss
from crossdistill.pipeline import run_recipe
from crossdistill.runs import Run
from crossdistill.train.checkpoint import list_checkpoints, load_checkpoint

MLP = "{model: mlp, params: {in_features: 64, hidden: [16]}}"
MUTUAL = [
    f"student={MLP}",
    "peers={wide: {model: mlp, params: {in_features: 64, hidden: [32]}}}",
    "losses=["
    "{name: ce}, "
    "{name: ce, label: ce_wide, sides: {student: wide}}, "
    "{name: kd, params: {temperature: 2.0}, sides: {teacher: wide}}, "
    "{name: kd, label: kd_wide, params: {temperature: 2.0}, "
    "sides: {student: wide, teacher: student}}]",
    "teacher=null",
]


def _recipe(tmp_path: Path, *overrides: str) -> Recipe:
    return load_recipe(
        DIGITS / "kd.yaml",
        overrides=[
            f"output.dir={tmp_path / 'runs'}",
            *MUTUAL,
            "data.limit_train=192",
            "train.progress=false",
            "train.device=cpu",
            "train.epochs=2",
            *overrides,
        ],
    )


def _models() -> tuple[Student, Student]:
    torch.manual_seed(0)
    return Student(nn.Linear(5, 3)), Student(nn.Linear(5, 3))


def _term(name: str, sides: tuple[str, str], detach: bool = True) -> Term:
    loss = build_loss("kd", {"temperature": 2.0}, where=name)
    return Term(name, loss, sides=sides, detach=detach)


def _kd(student: torch.Tensor, teacher: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Hinton's KD written out: t² · KL(softmax(teacher/t) ‖ softmax(student/t)), batch mean."""
    p = F.softmax(teacher / t, dim=-1)
    return (p * (p.log() - F.log_softmax(student / t, dim=-1))).sum(-1).mean() * t * t


# ------------------------------------------------------------------------------- the Distiller


def test_each_term_reads_the_models_its_sides_name() -> None:
    student, peer = _models()
    terms = [_term("kd", ("student", "peer")), _term("kd_peer", ("peer", "student"))]
    distiller = Distiller(student, terms, peers={"peer": peer})
    x = torch.randn(4, 5)
    _, got = distiller({"views": {"student": x}})
    s, p = student.model(x), peer.model(x)
    torch.testing.assert_close(got["kd"], _kd(s, p))
    torch.testing.assert_close(got["kd_peer"], _kd(p, s))
    assert not distiller.uses_teacher  # no term reads the frozen teacher: none is needed


@pytest.mark.parametrize("detach", [True, False])
def test_a_trainable_teacher_side_is_detached_unless_told(detach: bool) -> None:
    student, peer = _models()
    distiller = Distiller(student, [_term("kd", ("student", "peer"), detach)], peers={"peer": peer})
    _, terms = distiller({"views": {"student": torch.randn(4, 5)}})
    terms["kd"].backward()
    assert student.model.weight.grad is not None and student.model.weight.grad.abs().sum() > 0
    peer_grad = peer.model.weight.grad
    if detach:  # Deep Mutual Learning: the other peer's predictions are fixed targets
        assert peer_grad is None
    else:
        assert peer_grad is not None and peer_grad.abs().sum() > 0


def test_a_peer_reads_the_view_of_its_name_or_the_students() -> None:
    student, peer = _models()
    distiller = Distiller(student, [_term("kd", ("student", "peer"))], peers={"peer": peer})
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    own = distiller.knowledge({"views": {"student": x, "peer": y}})
    torch.testing.assert_close(own["peer"]["logits"], peer.model(y))
    shared = distiller.knowledge({"views": {"student": x}})
    torch.testing.assert_close(shared["peer"]["logits"], peer.model(x))


def test_trainable_holds_the_peers_and_a_run_without_them_is_unchanged() -> None:
    student, peer = _models()
    with_peer = Distiller(student, [_term("kd", ("student", "peer"))], peers={"peer": peer})
    assert "peers.peer.model.weight" in with_peer.trainable().state_dict()
    alone = Distiller(Student(nn.Linear(5, 3)), [Term("ce", build_loss("ce", {}, "ce"))])
    assert list(alone.trainable()) == ["student", "adapters", "losses"]


def test_sides_naming_no_such_model_are_refused_by_the_distiller() -> None:
    student, _ = _models()
    with pytest.raises(ConfigError, match="'ghost'"):
        Distiller(student, [_term("kd", ("student", "ghost"))])


# ------------------------------------------------------------------------------- the recipe


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("peers={teacher: " + MLP + "}", "never `student` or `teacher`"),
        ("peers={student: " + MLP + "}", "never `student` or `teacher`"),
        ("peers={'2nd': " + MLP + "}", "letters, digits and `_`"),
        ("peers={'a.b': " + MLP + "}", "letters, digits and `_`"),
        ("losses[1].sides={student: teacher}", "the teacher is frozen"),
        ("losses[1].sides={student: wide, teacher: wide}", "both 'wide'"),
        ("losses[1].sides={student: wid}", "'wid' is not a trainable model"),
        ("losses[2].sides={teacher: narrow}", "'narrow' is not a model of the recipe"),
    ],
)
def test_bad_peers_and_sides_fail_when_the_recipe_is_read(
    tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _recipe(tmp_path, override)


def test_a_recipe_without_peers_dumps_as_before() -> None:
    """No new key in the dump (config.yaml, fingerprints of runs and stores) unless used."""
    dumped = load_recipe(DIGITS / "kd.yaml").model_dump(mode="json")
    assert not {"peers", "generations", "continual"} & set(dumped)
    assert all("sides" not in loss for loss in dumped["losses"])


def test_with_student_swaps_names_and_back(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "data.views={wide: image}")
    swapped = recipe.with_student("wide")
    assert swapped.student == recipe.peers["wide"] and swapped.peers["wide"] == recipe.student
    sides = [(s.student, s.teacher) if s else None for s in (x.sides for x in swapped.losses)]
    assert sides == [("wide", "teacher"), None, ("wide", "student"), ("student", "wide")]
    assert "student" in swapped.data.views and "wide" not in swapped.data.views
    assert swapped.with_student("wide").fingerprint() == recipe.fingerprint()
    with pytest.raises(ConfigError, match="no peer 'narrow'"):
        recipe.with_student("narrow")


# ------------------------------------------------------------------------------- runs


def test_a_mutual_run_evaluates_and_finishes_every_peer(tmp_path: Path) -> None:
    result = run_recipe(_recipe(tmp_path))
    metrics = json.loads((result.run_dir / "eval.json").read_text())
    assert {"accuracy", "wide/accuracy"} <= set(metrics)
    peer = Run.open(result.run.peer("wide"))
    assert json.loads(peer.eval_file().read_text())["accuracy"] == metrics["wide/accuracy"]
    # the peer's run holds the peer's trained weights (those of the last checkpoint)
    last = load_checkpoint(list_checkpoints(result.run.checkpoints)[-1])["trainable"]
    model = peer.student().model.state_dict()
    assert all(torch.equal(model[k], last[f"peers.wide.model.{k}"]) for k in model)
    assert peer.config.student == result.run.config.peers["wide"]
    # its log: the joint training's, each evaluation the peer's (what its report plots)
    evals = [
        json.loads(line)
        for line in peer.metrics_file.read_text().splitlines()
        if '"kind": "eval"' in line
    ]
    assert evals[-1]["accuracy"] == metrics["wide/accuracy"]
    assert not any(key.startswith("wide/") for record in evals for key in record)
    out = export_run(peer, "safetensors")
    assert (out / "model.safetensors").is_file()


def test_an_interrupted_mutual_run_resumes_bit_identically(tmp_path: Path) -> None:
    whole = run_recipe(_recipe(tmp_path, "name=whole"))
    recipe = _recipe(
        tmp_path, "name=cut", "train.checkpoint_every_steps=2", "train.keep_checkpoints=0"
    )
    run_recipe(recipe)
    rewind_run(recipe.run_dir, "epoch-0001-step")  # mid-way through the second epoch
    run_recipe(recipe, resume=True)
    for name in ("student.safetensors", "peers/wide/student.safetensors"):
        assert same_tensors(whole.run_dir / name, recipe.run_dir / name), name


def test_cnn_and_vit_teach_each_other_through_adapters_both_ways(tmp_path: Path) -> None:
    recipe = _recipe(
        tmp_path,
        "student={model: cnn, params: {in_channels: 1, num_classes: 10, width: 4}, "
        "taps: [{name: map, path: block3}]}",
        "peers={vit: {model: vit, params: {image_size: 8, patch_size: 4, dim: 16, depth: 1, "
        "heads: 2}, taps: [{name: tokens, path: blocks.0}]}}",
        "losses=[{name: ce}, {name: ce, label: ce_vit, sides: {student: vit}}, "
        "{name: fitnet, params: {student: features/map, teacher: features/tokens}, "
        "adapter: auto, sides: {teacher: vit}}, "
        "{name: fitnet, label: fitnet_vit, params: {student: features/tokens, "
        "teacher: features/map}, adapter: auto, sides: {student: vit, teacher: student}}]",
        "data.limit_train=64",
        "train.epochs=1",
    )
    result = run_recipe(recipe)
    records = [json.loads(line) for line in result.run.metrics_file.read_text().splitlines()]
    chosen = next(r for r in records if r["kind"] == "adapters")
    assert (chosen["fitnet"], chosen["fitnet_vit"]) == ("map_to_tokens", "tokens_to_map")
    # the adapters train with the models and stay out of both exported students
    last = load_checkpoint(list_checkpoints(result.run.checkpoints)[-1])["trainable"]
    assert any(k.startswith("adapters.fitnet_vit.") for k in last)
    for run in (result.run, result.run.peer("vit")):
        meta = json.loads(run.student_json.read_text())
        assert meta["parameters"] == sum(p.numel() for p in run.student().parameters())
    assert json.loads(result.run.peer("vit").student_json.read_text())["model"] == "vit"


def test_two_processes_train_the_peers_as_one_does(tmp_path: Path) -> None:
    """DDP over the student, the peers and the adapters: a 2-process mutual run equals the
    1-process run, peer included (MLPs: no BatchNorm, whose per-rank statistics differ)."""
    from test_distributed import assert_close, crossdistill, recipe_file, student

    changes = {
        "peers": {"wide": {"model": "mlp", "params": {"in_features": 64, "hidden": [24]}}},
        "losses": [
            {"name": "ce"},
            {"name": "ce", "label": "ce_wide", "sides": {"student": "wide"}},
            {"name": "kd", "sides": {"teacher": "wide"}},
            {"name": "kd", "label": "kd_wide", "sides": {"student": "wide", "teacher": "student"}},
        ],
    }
    unused = tmp_path / "no_teacher.safetensors"
    files = [recipe_file(tmp_path, unused, name, **changes) for name in ("one", "two")]
    for file in files:  # no teacher: the peers teach each other
        raw = yaml.safe_load(file.read_text())
        raw["teacher"] = None
        file.write_text(yaml.safe_dump(raw))
    one, two = files
    crossdistill("run", str(one), cwd=tmp_path)
    crossdistill("run", str(two), "--nproc", "2", cwd=tmp_path)
    runs = tmp_path / "runs"
    for run in ("", "peers/wide"):
        assert_close(student(runs / "one" / run), student(runs / "two" / run), 1e-6)


def test_distill_trains_peers_from_python_and_writes_their_runs(tmp_path: Path) -> None:
    from crossdistill import build_model, distill, load_source

    torch.manual_seed(0)
    student = build_model("mlp", {"in_features": 64, "hidden": [16]})
    peer = build_model("mlp", {"in_features": 64, "hidden": [32]})
    before = {k: v.clone() for k, v in peer.state_dict().items()}
    out = distill(
        None,
        student,
        load_source("digits", "train"),
        losses=[
            "ce",
            {"name": "ce", "sides": {"student": "wide"}},
            {"name": "kd", "sides": {"teacher": "wide"}},
            {"name": "kd", "sides": {"student": "wide", "teacher": "student"}},
        ],
        eval_data=load_source("digits", "test"),
        peers={"wide": peer},
        epochs=1,
        run_dir=tmp_path / "run",
        progress=False,
        device="cpu",
    )
    assert "wide/accuracy" in out.metrics
    assert any(not torch.equal(before[k], v) for k, v in peer.state_dict().items())
    rebuilt = Run.open(tmp_path / "run" / "peers" / "wide").student().model.state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in peer.state_dict().items())
