"""``multi_kd``: KD from a per-example weighted mixture of several teachers, checked against a
NumPy float64 derivation of each weighting, by gradcheck, against ``kd``, and for its teacher
dropping, learned weights and errors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from crossdistill.config import AnnealSpec
from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.knowledge import Knowledge
from crossdistill.core.wrappers import Student
from crossdistill.errors import ConfigError, KnowledgeError, ShapeError
from crossdistill.losses import Needs, build_loss
from crossdistill.losses.logit.multi_kd import MultiKDLoss

T = 3.0


def inputs(m: int = 3, b: int = 6, c: int = 5, seed: int = 0, dtype=torch.float64):
    """Student logits ``(B, C)``, ``m`` teachers' logits ``(M, B, C)`` and labels ``(B,)``."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, generator=g, dtype=dtype) * 2
    t = torch.randn(m, b, c, generator=g, dtype=dtype) * 3
    y = torch.randint(0, c, (b,), generator=g)
    return s, t, y


def knowledge(s: torch.Tensor, t: torch.Tensor) -> tuple[Knowledge, Knowledge]:
    teacher = Knowledge({f"member{i}/logits": z for i, z in enumerate(t)}, source="teacher")
    return Knowledge({"logits": s}, source="student"), teacher


def run(loss: MultiKDLoss, s, t, y=None) -> torch.Tensor:
    return loss(*knowledge(s, t), y)


def multi(**params: Any) -> MultiKDLoss:
    loss = build_loss("multi_kd", {"temperature": T, **params})
    assert isinstance(loss, MultiKDLoss)
    return loss.eval()


# ------------------------------------------------------------------------------- NumPy


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_weights(t, y, weighting, weights=None, tau=1.0, theta=None, temperature=T):
    """``(M, B)`` mixture weights, one example and one teacher at a time."""
    m, b, _ = t.shape
    prior = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    alpha = np.empty((m, b))
    for i in range(b):
        p = [np_softmax(t[k, i] / temperature) for k in range(m)]
        if weighting == "fixed":
            g = np.ones(m)
        elif weighting == "confidence":
            g = np.array([pk.max() for pk in p])
        elif weighting == "entropy":
            h = np.array([-(pk * np.log(pk)).sum() for pk in p])
            g = np.exp(-h / tau)
        elif weighting == "label":
            g = np.array([pk[y[i]] for pk in p])
        else:  # learned: softmax of the scores, no prior
            g, prior = np.exp(theta), np.ones(m)
        alpha[:, i] = prior * g / (prior * g).sum()
    return alpha


def ref_multi_kd(s, t, alpha, temperature=T) -> float:
    """``T² · mean_i KL(Σ_m α_mi p_mi || softmax(s_i / T))``."""
    kl = []
    for i in range(len(s)):
        mix = sum(alpha[k, i] * np_softmax(t[k, i] / temperature) for k in range(len(t)))
        q = np_softmax(s[i] / temperature)
        kl.append(float(np.sum(mix * np.log(mix / q))))
    return temperature**2 * float(np.mean(kl))


CASES = {
    "fixed-equal": ({"weighting": "fixed"}, {}),
    "fixed-weights": ({"weighting": "fixed", "weights": [1.0, 2.0, 5.0]}, {}),
    "confidence": ({"weighting": "confidence"}, {}),
    "confidence-prior": ({"weighting": "confidence", "weights": [3.0, 1.0, 1.0]}, {}),
    "entropy": ({"weighting": "entropy"}, {}),
    "entropy-tau": ({"weighting": "entropy", "weight_temperature": 0.3}, {"tau": 0.3}),
    "label": ({"weighting": "label"}, {}),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_weighting_matches_numpy(case: str) -> None:
    params, extra = CASES[case]
    loss = multi(members=3, **params)
    s, t, y = inputs()
    alpha = ref_weights(
        t.numpy(), y.numpy(), params["weighting"], weights=params.get("weights"), **extra
    )
    got = loss.mixture_weights(*knowledge(s, t), y)
    np.testing.assert_allclose(got.detach().numpy(), alpha, rtol=1e-12, atol=1e-14)
    want = ref_multi_kd(s.numpy(), t.numpy(), alpha)
    assert float(run(loss, s, t, y)) == pytest.approx(want, rel=1e-10)


def test_weightings_differ_where_teachers_differ() -> None:
    """Each weighting reads something of its own: no two give the same weights."""
    s, t, y = inputs()
    found = [
        multi(members=3, weighting=w).mixture_weights(*knowledge(s, t), y)
        for w in ("fixed", "confidence", "entropy", "label")
    ]
    for i in range(len(found)):
        for j in range(i + 1, len(found)):
            assert not torch.allclose(found[i], found[j])


def test_learned_matches_numpy_and_starts_at_the_prior() -> None:
    loss = multi(members=3, weighting="learned", weights=[1.0, 1.0, 2.0])
    np.testing.assert_allclose(
        loss.teacher_scores.detach().numpy(), np.log([0.25, 0.25, 0.5]), rtol=1e-6
    )
    with torch.no_grad():
        loss.teacher_scores.copy_(torch.tensor([0.3, -1.0, 0.7]))
    loss.double()
    s, t, y = inputs()
    theta = loss.teacher_scores.detach().numpy()
    alpha = ref_weights(t.numpy(), y.numpy(), "learned", theta=theta)
    got = float(run(loss, s, t).detach())
    assert got == pytest.approx(ref_multi_kd(s.numpy(), t.numpy(), alpha), rel=1e-10)


# ------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("weighting", ["fixed", "confidence", "entropy", "label"])
def test_gradcheck(weighting: str) -> None:
    loss = multi(members=3, weighting=weighting)
    s, t, y = inputs(b=3, c=4, seed=1)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: run(loss, z, t, y), (s,), eps=1e-6, atol=1e-6)


def test_gradcheck_learned_scores_and_student() -> None:
    loss = multi(members=3, weighting="learned").double()
    s, t, _ = inputs(b=3, c=4, seed=2)

    def f(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(loss, {"teacher_scores": theta}, knowledge(z, t))

    theta = torch.tensor([0.2, -0.4, 0.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (s.requires_grad_(True), theta), eps=1e-6, atol=1e-6)


def test_gradcheck_with_dropped_teachers() -> None:
    """The same draws (reseeded) at every evaluation: dropping is a mask, smooth elsewhere."""
    loss = multi(members=3, weighting="confidence", drop=0.5).train()
    s, t, y = inputs(b=4, c=4, seed=3)

    def f(z: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        return run(loss, z, t, y)

    assert torch.autograd.gradcheck(f, (s.requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_learned_weights_are_trained_parameters_of_the_distiller() -> None:
    loss = build_loss("multi_kd", {"weighting": "learned", "members": 2})
    distiller = Distiller(Student(nn.Linear(4, 5)), [Term("multi_kd", loss)], knowledge_given=True)
    params = dict(distiller.trainable().named_parameters())
    assert params["losses.multi_kd.teacher_scores"] is loss.teacher_scores
    s, t, _ = inputs(m=2, seed=4, dtype=torch.float32)
    run(loss, s.requires_grad_(True), t).backward()
    grad = loss.teacher_scores.grad
    assert grad is not None and bool((grad != 0).all())
    # the score of one teacher gains what the other's loses (softmax): the gradients cancel
    assert float(grad.sum()) == pytest.approx(0.0, abs=1e-6)
    # a step moves the weight towards the teacher the student is closer to
    s2 = t[0].clone()  # the student is teacher 0
    loss.teacher_scores.grad = None
    run(loss, s2, t).backward()
    assert loss.teacher_scores.grad[0] < 0 < loss.teacher_scores.grad[1]


def test_other_weightings_have_no_parameters() -> None:
    for weighting in ("fixed", "confidence", "entropy", "label"):
        loss = multi(weighting=weighting)
        assert not list(loss.parameters()) and not loss.state_dict()


# ------------------------------------------------------------------------------- against kd


def test_one_teacher_fixed_is_kd_exactly() -> None:
    s, t, _ = inputs(m=1, dtype=torch.float32)
    kd = build_loss("kd", {"temperature": T, "teacher": "member0/logits"})
    for weighting in ("fixed", "confidence", "entropy"):
        one = multi(teachers=["member0/logits"], weighting=weighting, drop=0.5).train()
        assert torch.equal(run(one, s, t), kd(*knowledge(s, t)))


def test_equal_fixed_weights_are_kd_of_the_averaged_probabilities() -> None:
    s, t, _ = inputs(m=3)
    mean_p = torch.softmax(t / T, dim=2).mean(dim=0)
    kd = build_loss("kd", {"temperature": T})
    # logits whose softmax at T is the average: T · log p̄
    want = kd(Knowledge({"logits": s}), Knowledge({"logits": T * mean_p.log()}))
    torch.testing.assert_close(run(multi(members=3), s, t), want, rtol=1e-12, atol=0)


def test_zero_when_the_student_is_the_mixture() -> None:
    _, t, _ = inputs(m=2)
    student = T * torch.softmax(t / T, dim=2).mean(dim=0).log()
    assert float(run(multi(), student, t)) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------- dropping


def test_no_drop_is_deterministic_and_draws_nothing() -> None:
    loss = multi(members=3, weighting="confidence").train()
    s, t, y = inputs()
    state = torch.get_rng_state()
    first = run(loss, s, t, y)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(run(loss, s, t, y), first)
    assert torch.equal(loss.eval()(*knowledge(s, t)), first)


def test_evaluation_never_drops() -> None:
    loss = multi(members=3, drop=0.9).eval()
    s, t, _ = inputs()
    state = torch.get_rng_state()
    assert torch.equal(run(loss, s, t), run(multi(members=3), s, t))
    assert torch.equal(torch.get_rng_state(), state)


def test_drop_renormalises_keeps_the_furthest_teacher_and_matches_numpy() -> None:
    s, t, y = inputs(m=3, b=64, seed=5)
    loss = multi(members=3, weighting="confidence", drop=0.6)
    full = loss.mixture_weights(*knowledge(s, t), y)  # evaluation: nothing dropped
    loss.train()
    torch.manual_seed(11)
    alpha = loss.mixture_weights(*knowledge(s, t), y).detach()
    kept = alpha > 0
    # never all dropped; the teacher the student is furthest from is always kept
    assert bool(kept.any(dim=0).all())
    p, q = torch.softmax(t / T, dim=2), torch.softmax(s / T, dim=1)
    furthest = (p * (p.log() - q.log())).sum(dim=2).argmax(dim=0)
    assert bool(kept[furthest, torch.arange(64)].all())
    assert not bool(kept.all())  # some teachers were dropped
    # the kept weights are the full ones renormalised over the kept teachers
    want = torch.where(kept, full, 0.0)
    torch.testing.assert_close(alpha, want / want.sum(dim=0), rtol=1e-12, atol=1e-15)
    torch.manual_seed(11)  # the same draws: the loss of that mixture
    got = run(loss, s, t, y)
    assert float(got) == pytest.approx(ref_multi_kd(s.numpy(), t.numpy(), alpha.numpy()))


def test_drop_rate_and_seeded_draws() -> None:
    """Two teachers: the one not furthest from the student goes with probability ``drop``."""
    s, t, _ = inputs(m=2, b=4000, seed=6)
    loss = multi(drop=0.3).train()
    torch.manual_seed(0)
    alpha = loss.mixture_weights(*knowledge(s, t))
    rate = float((alpha == 0).sum()) / 4000  # exactly one of two can go per example
    assert rate == pytest.approx(0.3, abs=0.03)  # ~6 standard deviations
    torch.manual_seed(0)
    assert torch.equal(loss.mixture_weights(*knowledge(s, t)), alpha)
    torch.manual_seed(1)
    assert not torch.equal(loss.mixture_weights(*knowledge(s, t)), alpha)


def test_drop_and_temperatures_can_be_scheduled() -> None:
    """Scheduled values are 0-dim tensors: the loss takes them where it takes floats."""
    loss = build_loss("multi_kd", {"weighting": "entropy"})
    schedule = {
        "drop": AnnealSpec(start=0.0, end=0.5),
        "temperature": AnnealSpec(start=4.0, end=2.0),
        "weight_temperature": AnnealSpec(start=1.0, end=0.5),
    }
    term = Term("multi_kd", loss, schedule=schedule)
    distiller = Distiller(Student(nn.Identity()), [term], knowledge_given=True)
    distiller.set_progress(1.0)
    s, t, _ = inputs(m=2, dtype=torch.float32)
    batch = {"views": {"student": s}, "knowledge": knowledge(s, t)[1]}
    torch.manual_seed(0)
    _, terms = distiller.train()(batch)
    torch.manual_seed(0)
    want = multi(temperature=2.0, weighting="entropy", weight_temperature=0.5, drop=0.5).train()
    torch.testing.assert_close(terms["multi_kd"], run(want, s, t))
    with pytest.raises(ConfigError, match="drop"):  # a schedule out of range is refused
        bad = Term("m", build_loss("multi_kd"), schedule={"drop": AnnealSpec(start=0, end=1)})
        Distiller(Student(nn.Identity()), [bad], knowledge_given=True)


# ------------------------------------------------------------------------------- keys, params


def test_needs() -> None:
    assert multi().needs() == Needs(("logits",), ("member0/logits", "member1/logits"), False)
    assert multi(members=3, weighting="label").needs() == Needs(
        ("logits",), ("member0/logits", "member1/logits", "member2/logits"), True
    )
    keys = ["member2/logits", "other_logits"]
    assert multi(teachers=keys, student="head2").needs() == Needs(("head2",), tuple(keys), False)


def test_a_key_the_teacher_lacks_is_named() -> None:
    s, t, _ = inputs(m=2)
    with pytest.raises(KnowledgeError, match="member2/logits"):
        run(multi(members=3), s, t)
    loss = multi(teachers=["member0/logits", "member5/logits"])
    distiller = Distiller(Student(nn.Identity()), [Term("mix", loss)], knowledge_given=True)
    batch = {"views": {"student": s}, "knowledge": knowledge(s, t)[1]}
    with pytest.raises(KnowledgeError, match=r"loss 'mix' needs 'member5/logits'"):
        distiller(batch)


def test_more_members_than_read_by_default_is_refused() -> None:
    s, t, _ = inputs(m=3)
    with pytest.raises(ConfigError, match="members:"):
        run(multi(), s, t)
    run(multi(teachers=["member0/logits", "member1/logits"]), s, t)  # named: on purpose


def test_teachers_of_another_shape_are_refused() -> None:
    s, t, _ = inputs(m=2)
    teacher = Knowledge({"member0/logits": t[0], "member1/logits": t[1][:, :3]})
    with pytest.raises(ShapeError, match="member1/logits"):
        multi()(Knowledge({"logits": s}), teacher)


def test_label_weighting_needs_the_target() -> None:
    s, t, _ = inputs(m=2)
    with pytest.raises(ValueError, match="target"):
        run(multi(weighting="label"), s, t)


BAD: dict[str, dict[str, Any]] = {
    "drop-one": {"drop": 1.0},
    "drop-negative": {"drop": -0.1},
    "drop-nan": {"drop": math.nan},
    "weights-too-few": {"members": 3, "weights": [1.0, 2.0]},
    "weights-too-many": {"weights": [1.0, 2.0, 3.0]},
    "weights-zero": {"weights": [1.0, 0.0]},
    "weights-negative": {"weights": [1.0, -1.0]},
    "members-zero": {"members": 0},
    "teachers-empty": {"teachers": []},
    "teachers-twice": {"teachers": ["member0/logits", "member0/logits"]},
    "members-and-teachers": {"members": 3, "teachers": ["member0/logits", "member1/logits"]},
    "weighting": {"weighting": "vote"},
    "temperature": {"temperature": 0.0},
    "weight-temperature": {"weight_temperature": -1.0},
}


@pytest.mark.parametrize("params", BAD.values(), ids=list(BAD))
def test_bad_params_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        build_loss("multi_kd", params)


def test_search_space() -> None:
    assert set(MultiKDLoss.search_space) == {"temperature", "drop"}
