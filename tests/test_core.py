"""The core nouns: taps, Teacher/Student wrappers, ensembles, the registry, Knowledge, Distiller."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossdistill import Distiller, EnsembleTeacher, Knowledge, Student, Tap, Teacher, Term
from crossdistill.errors import (
    ConfigError,
    CrossDistillError,
    KnowledgeError,
    TapError,
    UnknownNameError,
)
from crossdistill.losses import LOSSES, Loss, build_loss
from crossdistill.models.zoo.cnn import SmallCNN
from crossdistill.registry import Registry

# ------------------------------------------------------------------------------- test models


class PairOut(nn.Module):
    """Returns a tuple ``(2x, (x + 1, {"attn": -x}))``."""

    def forward(self, x: torch.Tensor) -> Any:
        return 2 * x, (x + 1, {"attn": -x})


class DictOut(nn.Module):
    """Returns a dict ``{"a": x, "b": x * 3}``."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"a": x, "b": x * 3}


class Net(nn.Module):
    """``block1`` (Linear) → ``block2`` (Linear) → ``pair`` (tuple) / ``named`` (dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Linear(4, 3)
        self.block2 = nn.Linear(3, 2)
        self.pair = PairOut()
        self.named = DictOut()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block2(self.block1(x))
        doubled, _ = self.pair(h)
        return self.named(doubled)["b"]


class Sometimes(nn.Module):
    """Runs ``side`` only when the batch's first input is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Linear(2, 2)
        self.side = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        if x[0, 0] > 0:
            out = out + self.side(x)
        return out


class Raises(nn.Module):
    """A teacher that must never run."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher's forward ran")


class Fixed(nn.Module):
    """Returns a fixed tensor (broadcast over the batch)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(len(x), -1) + 0 * x.sum(dim=1, keepdim=True)


def _x(n: int = 5, d: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- taps


def test_tap_on_output_captures_the_module_output() -> None:
    torch.manual_seed(0)
    net = Net()
    student = Student(net, taps=[Tap("h1", "block1"), Tap("h2", "block2")])
    x = _x()
    k = student(x)
    assert set(k) == {"logits", "features/h1", "features/h2"}
    torch.testing.assert_close(k["features/h1"], net.block1(x))
    torch.testing.assert_close(k["features/h2"], net.block2(net.block1(x)))
    torch.testing.assert_close(k["logits"], 6 * net.block2(net.block1(x)))


def test_tap_on_input_captures_the_first_argument() -> None:
    torch.manual_seed(0)
    net = Net()
    k = Student(net, taps=[Tap("into2", "block2", on="input")])(_x())
    torch.testing.assert_close(k["features/into2"], net.block1(_x()))


def test_tap_pool_averages_maps_and_tokens() -> None:
    maps = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    pooled = Tap("m", "x", pool=2).capture(maps, "m")
    expected = maps.reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))  # mean of each 2x2 block
    torch.testing.assert_close(pooled, expected)
    tokens = torch.randn(2, 6, 5)
    torch.testing.assert_close(
        Tap("t", "x", pool=3).capture(tokens, "t"), tokens.reshape(2, 3, 2, 5).mean(2)
    )
    with pytest.raises(TapError, match="pool needs"):
        Tap("v", "x", pool=2).capture(torch.randn(2, 5), "v")


def test_tap_select_on_tuple_and_dict_outputs() -> None:
    torch.manual_seed(0)
    net = Net()
    taps = [
        Tap("first", "pair", select=0),
        Tap("nested", "pair", select="1.0"),
        Tap("attn", "pair", select="1.1.attn", kind="attention"),
        Tap("b", "named", select="b"),
    ]
    x = _x()
    k = Student(net, taps=taps)(x)
    h = net.block2(net.block1(x))
    torch.testing.assert_close(k["features/first"], 2 * h)
    torch.testing.assert_close(k["features/nested"], h + 1)
    torch.testing.assert_close(k["attention/attn"], -h)
    torch.testing.assert_close(k["features/b"], 6 * h)


def test_tap_on_a_tuple_without_select_asks_for_one() -> None:
    student = Student(Net(), taps=[Tap("p", "pair")])
    with pytest.raises(TapError, match="not a tensor") as info:
        student(_x())
    assert "select" in str(info.value)
    assert "tuple of 2 elements" in str(info.value)


def test_tap_select_that_does_not_exist_names_the_keys() -> None:
    student = Student(Net(), taps=[Tap("z", "named", select="zz")])
    with pytest.raises(TapError, match="cannot select 'zz'") as info:
        student(_x())
    assert "['a', 'b']" in str(info.value)


def test_wrong_tap_path_suggests_close_names() -> None:
    with pytest.raises(TapError, match="no module at path 'blok2'") as info:
        Student(Net(), taps=[Tap("f", "blok2")])
    assert "did you mean 'block2'" in str(info.value)
    assert isinstance(info.value, CrossDistillError)


def test_wrong_tap_path_in_the_zoo_cnn() -> None:
    with pytest.raises(TapError) as info:
        Student(SmallCNN(width=2), taps=[Tap("f", "blok3")])
    assert "'block3'" in str(info.value)


def test_two_taps_with_the_same_name_are_refused() -> None:
    with pytest.raises(TapError, match="two taps are named 'f'"):
        Student(Net(), taps=[Tap("f", "block1"), Tap("f", "block2")])


def test_taps_do_not_keep_captures_across_forwards() -> None:
    torch.manual_seed(0)
    student = Student(Sometimes(), taps=[Tap("side", "side")])
    pos = torch.ones(3, 2)
    k1 = student(pos)
    assert "features/side" in k1
    ref = weakref.ref(k1["features/side"])
    # The second forward skips `side`: its Knowledge must not carry the first forward's capture.
    k2 = student(-pos)
    assert "features/side" not in k2
    # ... and the wrapper holds no reference to the first capture once the caller drops it.
    del k1
    gc.collect()
    assert ref() is None


def test_tap_capture_is_not_changed_by_a_later_in_place_op() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))
    x = _x(8)
    k = Student(model, taps=[Tap("pre", "0")])(x)
    torch.testing.assert_close(k["features/pre"], model[0](x))  # has negative entries


# ------------------------------------------------------------------------------- wrappers


def test_teacher_is_frozen() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model.train()
    teacher = Teacher(model)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not teacher.training and not model[1].training
    teacher.train()
    assert not teacher.training and not model[1].training
    stats = model[1].running_mean.clone()
    x = _x().requires_grad_(True)
    k = teacher(x)
    assert not k["logits"].requires_grad and k["logits"].grad_fn is None
    torch.testing.assert_close(model[1].running_mean, stats)  # eval mode: stats untouched
    assert k.source == "teacher"


def test_distiller_train_mode_keeps_the_teacher_in_eval() -> None:
    student = Student(nn.Linear(4, 3))
    teacher = Teacher(nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)))
    distiller = Distiller(student, [Term("kd", build_loss("kd"))], teacher=teacher)
    distiller.train()
    assert student.training
    assert not teacher.training and not any(m.training for m in teacher.modules())


def test_student_names_a_tensor_output() -> None:
    k = Student(nn.Linear(4, 3))(_x())
    assert list(k) == ["logits"] and k.source == "student"
    assert k["logits"].shape == (5, 3)


def test_student_names_tuple_outputs() -> None:
    class Two(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x[:, :3], x

    x = _x()
    k = Student(Two(), outputs=["logits", "embedding"])(x)
    torch.testing.assert_close(k["logits"], x[:, :3])
    torch.testing.assert_close(k["embedding"], x)


def test_student_maps_dict_outputs() -> None:
    x = _x()
    k = Student(DictOut(), outputs={"embedding": "a", "logits": "b"})(x)
    torch.testing.assert_close(k["embedding"], x)
    torch.testing.assert_close(k["logits"], 3 * x)


def test_student_missing_dict_key_is_a_clear_error() -> None:
    student = Student(DictOut(), outputs={"embedding": "sentence_embedding"})
    with pytest.raises(KnowledgeError, match="sentence_embedding") as info:
        student(_x())
    assert "['a', 'b']" in str(info.value)  # the keys it did return


def test_student_dict_output_with_list_outputs_is_a_clear_error() -> None:
    with pytest.raises(KnowledgeError, match="returned a dict") as info:
        Student(DictOut())(_x())
    assert "outputs:" in str(info.value)


# ------------------------------------------------------------------------------- ensembles


def test_ensemble_is_the_weighted_mean_of_logits() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0]])
    b = torch.tensor([[-3.0, 0.5, 7.0]])
    ensemble = EnsembleTeacher([Teacher(Fixed(a)), Teacher(Fixed(b))], weights=[1.0, 3.0])
    k = ensemble(_x(2))
    expected = (1.0 * a + 3.0 * b) / 4.0
    torch.testing.assert_close(k["logits"], expected.expand(2, -1))
    assert not k["logits"].requires_grad


def test_ensemble_default_weights_average_and_keep_member_features() -> None:
    torch.manual_seed(0)
    m1, m2 = Net(), Net()
    t1 = Teacher(m1, taps=[Tap("h", "block1")])
    t2 = Teacher(m2, taps=[Tap("h", "block1")])
    x = _x()
    k = EnsembleTeacher([t1, t2])(x)
    torch.testing.assert_close(k["logits"], (m1(x) + m2(x)) / 2)
    torch.testing.assert_close(k["member0/features/h"], m1.block1(x))
    torch.testing.assert_close(k["member1/features/h"], m2.block1(x))
    assert "features/h" not in k


def test_ensemble_is_frozen() -> None:
    ensemble = EnsembleTeacher([Teacher(nn.Linear(4, 3)), Teacher(nn.Linear(4, 3))])
    ensemble.train()
    assert not any(m.training for m in ensemble.modules())
    assert not any(p.requires_grad for p in ensemble.parameters())


@pytest.mark.parametrize(
    "weights",
    [[1.0], [1.0, 2.0, 3.0], [-1.0, 2.0], [0.0, 0.0]],
    ids=["too-few", "too-many", "negative", "all-zero"],
)
def test_ensemble_bad_weights_are_refused(weights: list[float]) -> None:
    members = [Teacher(nn.Linear(4, 3)), Teacher(nn.Linear(4, 3))]
    with pytest.raises(ConfigError, match="ensemble weights"):
        EnsembleTeacher(members, weights)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_ensemble_non_finite_weights_are_refused(bad: float) -> None:
    members = [Teacher(nn.Linear(4, 3)), Teacher(nn.Linear(4, 3))]
    with pytest.raises(ConfigError):
        EnsembleTeacher(members, [bad, 1.0])


def test_ensemble_needs_members() -> None:
    with pytest.raises(ConfigError, match="at least one member"):
        EnsembleTeacher([])


# ------------------------------------------------------------------------------- registry


def test_registry_unknown_name_lists_known_and_close() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("alpha")(1)
    reg.register("beta")(2)
    reg.register("gamma")(3)
    assert reg.get("beta") == 2
    assert "alpha" in reg and "delta" not in reg
    assert reg.names() == ["alpha", "beta", "gamma"] == list(reg)
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpah")
    text = str(info.value)
    assert "unknown widget 'alpah'" in text
    assert "did you mean 'alpha'" in text
    assert "known: alpha, beta, gamma" in text
    assert isinstance(info.value, KeyError)
    assert not text.startswith('"')  # not KeyError's quoted repr


def test_registry_refuses_a_second_object_under_one_name() -> None:
    reg: Registry[object] = Registry("widget")
    obj = object()
    reg.register("a")(obj)
    reg.register("a")(obj)  # the same object again (a re-import) is fine
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(object())


def test_loss_registry_suggests_the_right_loss() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'kd'"):
        LOSSES.get("kdd")


# ------------------------------------------------------------------------------- knowledge


def test_knowledge_require_names_the_loss_and_the_missing_key() -> None:
    k = Knowledge({"logits": torch.zeros(2, 3)}, source="teacher")
    k.require(["logits"], "loss 'kd'")  # present: no error
    with pytest.raises(KnowledgeError) as info:
        k.require(["logits", "embedding"], "loss 'rkd'")
    text = str(info.value)
    assert "loss 'rkd' needs 'embedding' from the teacher" in text
    assert "['logits']" in text
    assert "outputs:" in text  # the hint says where to name outputs


def test_knowledge_require_for_a_feature_hints_at_taps() -> None:
    with pytest.raises(KnowledgeError, match="features/block2") as info:
        Knowledge(source="student").require(["features/block2"], "loss 'fitnet'")
    assert "nothing" in str(info.value)
    assert "taps:" in str(info.value)


def test_knowledge_detach_and_to_keep_the_source() -> None:
    k = Knowledge({"logits": torch.ones(2, requires_grad=True)}, source="store")
    d = k.detach().to("cpu")
    assert d.source == "store" and not d["logits"].requires_grad


# ------------------------------------------------------------------------------- distiller


class Scaled(Loss):
    """``scale * mean(student logits)``: a loss with a known value."""

    needs_student = ("logits",)

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, student: Knowledge, teacher: Knowledge, target: Any) -> torch.Tensor:
        return self.scale * student["logits"].mean()


def _batch(x: torch.Tensor, target: torch.Tensor | None = None, **extra: Any) -> dict[str, Any]:
    batch: dict[str, Any] = {"views": {"student": x, "teacher": x}, **extra}
    if target is not None:
        batch["target"] = target
    return batch


def test_distiller_returns_knowledge_and_weighted_terms() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    terms = [
        Term("ce", build_loss("ce"), 0.5),
        Term("soft", build_loss("kd", {"temperature": 2.0}), 2.0),
        Term("mean", Scaled(3.0), 1.0),
    ]
    distiller = Distiller(Student(student), terms, teacher=Teacher(teacher))
    x, y = _x(6), torch.tensor([0, 1, 2, 0, 1, 2])
    knowledge, values = distiller(_batch(x, y))
    assert isinstance(knowledge, Knowledge) and knowledge.source == "student"
    assert list(values) == ["ce", "soft", "mean"]
    s, t = student(x), teacher(x)
    kl = F.kl_div(
        F.log_softmax(s / 2, 1), F.log_softmax(t / 2, 1), log_target=True, reduction="batchmean"
    )
    torch.testing.assert_close(values["ce"], 0.5 * F.cross_entropy(s, y))
    torch.testing.assert_close(values["soft"], 2.0 * 4.0 * kl)
    torch.testing.assert_close(values["mean"], 3.0 * s.mean())
    sum(values.values()).backward()
    assert student.weight.grad is not None
    assert teacher.weight.grad is None


def test_distiller_skips_the_teacher_when_no_loss_reads_it() -> None:
    distiller = Distiller(
        Student(nn.Linear(4, 3)), [Term("ce", build_loss("ce"))], teacher=Teacher(Raises())
    )
    _, values = distiller(_batch(_x(4), torch.tensor([0, 1, 2, 0])))
    assert set(values) == {"ce"}


def test_distiller_loss_reading_the_teacher_needs_a_teacher() -> None:
    with pytest.raises(ConfigError, match=r"losses \['kd'\] read the teacher") as info:
        Distiller(
            Student(nn.Linear(4, 3)), [Term("ce", build_loss("ce")), Term("kd", build_loss("kd"))]
        )
    assert "teacher:" in str(info.value)


def test_distiller_needs_a_loss() -> None:
    with pytest.raises(ConfigError, match="at least one loss"):
        Distiller(Student(nn.Linear(4, 3)), [])


def test_distiller_uses_batch_knowledge_instead_of_the_teacher() -> None:
    torch.manual_seed(0)
    student = nn.Linear(4, 3)
    distiller = Distiller(
        Student(student),
        [Term("kd", build_loss("kd", {"temperature": 1.0}))],
        teacher=Teacher(Raises()),
    )
    x = _x(4)
    stored = Knowledge({"logits": torch.randn(4, 3)}, source="store")
    _, values = distiller(_batch(x, knowledge=stored))
    expected = F.kl_div(
        F.log_softmax(student(x), 1),
        F.log_softmax(stored["logits"], 1),
        log_target=True,
        reduction="batchmean",
    )
    torch.testing.assert_close(values["kd"], expected)


def test_distiller_missing_teacher_knowledge_names_the_loss() -> None:
    distiller = Distiller(
        Student(nn.Linear(4, 3)),
        [Term("soft", build_loss("kd"))],
        teacher=Teacher(nn.Linear(4, 3), outputs=["embedding"]),
    )
    with pytest.raises(KnowledgeError, match="loss 'soft' needs 'logits' from the teacher"):
        distiller(_batch(_x(2)))


def test_distiller_loss_needing_targets_without_targets() -> None:
    distiller = Distiller(Student(nn.Linear(4, 3)), [Term("ce", build_loss("ce"))])
    with pytest.raises(ConfigError, match="loss 'ce' needs targets"):
        distiller(_batch(_x(2)))


def test_distiller_trainable_excludes_the_teacher() -> None:
    student, teacher = Student(nn.Linear(4, 3)), Teacher(nn.Linear(4, 3))
    distiller = Distiller(
        student, [Term("kd", build_loss("kd"), adapter=nn.Linear(3, 3))], teacher=teacher
    )
    trainable = distiller.trainable()
    ids = {id(p) for p in trainable.parameters()}
    assert not ids & {id(p) for p in teacher.parameters()}
    assert {id(p) for p in student.parameters()} <= ids
    assert not any(k.startswith("teacher") for k in trainable.state_dict())
    assert distiller.extra_parameters() == 3 * 3 + 3  # the adapter


def test_distiller_adapter_maps_what_its_loss_reads() -> None:
    """A term's adapter changes the student tensor its own loss sees, and nothing else."""
    adapter = nn.Linear(3, 5)
    teacher = Teacher(nn.Linear(4, 5))
    seen = {}

    class Spy(Loss):
        needs_student, needs_teacher = ("logits",), ("logits",)

        def forward(self, student, teacher, target):
            seen[id(self)] = student["logits"]
            return student["logits"].sum() * 0

    adapted, plain = Spy(), Spy()
    distiller = Distiller(
        Student(nn.Linear(4, 3)),
        [Term("a", adapted, adapter=adapter), Term("b", plain)],
        teacher=teacher,
    )
    student, _ = distiller(_batch(_x(2)))
    assert torch.equal(seen[id(adapted)], adapter(student["logits"]))
    assert torch.equal(seen[id(plain)], student["logits"])


def test_require_imports_or_names_the_missing_package_and_its_install() -> None:
    import json

    from crossdistill.errors import DataError, require

    assert require("json", "a test", "pip install nothing") is json
    with pytest.raises(ConfigError, match="the thing needs the package 'no_such_pkg_x'") as info:
        require("no_such_pkg_x.sub", "the thing", "pip install no-such-pkg-x")
    assert info.value.hint == "pip install no-such-pkg-x"
    with pytest.raises(DataError, match="not installed"):
        require("no_such_pkg_x", "a source", "pip install it", DataError)
