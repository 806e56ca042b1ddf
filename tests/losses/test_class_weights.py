"""Class-balanced ``ce``, ``kd``, ``dkd`` and ``nkd`` (``class_weights``) against NumPy
re-derivations, and the built-in search spaces the tuner reads."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# tests/losses is on sys.path under pytest (rootdir-relative "prepend" import)
from ref_logit import ref_dkd, ref_nkd
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from crossdistill import Distiller, Student, Term, build_loss
from crossdistill.config import SearchDim
from crossdistill.core.knowledge import Knowledge
from crossdistill.core.wrappers import Teacher
from crossdistill.errors import ConfigError, ShapeError
from crossdistill.losses import LOSSES

C = 4
COUNTS = [50, 10, 3, 0]  # the last class has no training example
BETA = 0.99


# ------------------------------------------------------------------------------- references


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_balanced(counts: list[int]) -> np.ndarray:
    """n / (K n_c), 0 for a class without examples."""
    n_c = np.asarray(counts, dtype=np.float64)
    out = np.zeros_like(n_c)
    out[n_c > 0] = n_c.sum() / (len(n_c) * n_c[n_c > 0])
    return out


def np_effective(counts: list[int], beta: float) -> np.ndarray:
    """(1 - beta) / (1 - beta^n_c) (Cui et al. 2019), 0 without examples, summing to K."""
    out = np.array([(1 - beta) / (1 - beta**n) if n else 0.0 for n in counts])
    return out * len(counts) / out.sum()


def np_ce(s: np.ndarray, y: np.ndarray, w: np.ndarray, eps: float) -> float:
    """torch's documented weighted, label-smoothed cross-entropy of class indices."""
    logp = _log_softmax(s)
    rows = np.arange(len(y))
    norm = w[y].sum()
    nll = -(w[y] * logp[rows, y]).sum() / norm
    smooth = -(logp * w[None, :]).sum() / norm
    return (1 - eps) * nll + eps / s.shape[1] * smooth


def np_ce_probs(s: np.ndarray, q: np.ndarray, w: np.ndarray, eps: float) -> float:
    """Weighted cross-entropy of class probabilities: a plain mean over the batch."""
    q = (1 - eps) * q + eps / s.shape[1]
    return float(-(w[None, :] * q * _log_softmax(s)).sum(axis=1).mean())


def np_kd(s: np.ndarray, t: np.ndarray, y: np.ndarray, w: np.ndarray, temp: float) -> float:
    """T² Σ_i w_{y_i} KL(p_t,i || p_s,i) / Σ_i w_{y_i}."""
    log_ps, log_pt = _log_softmax(s / temp), _log_softmax(t / temp)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1)
    return temp**2 * float((w[y] * kl).sum() / w[y].sum())


def _data(seed: int = 0, batch: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.randn(batch, C, generator=g, dtype=torch.float64)
    t = 2 * torch.randn(batch, C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C - 1, (batch,), generator=g)  # never the empty class
    return s, t, y


def _weighted(name: str, class_weights: Any, **params: Any) -> nn.Module:
    loss = build_loss(name, {"class_weights": class_weights, **params}).double()
    loss.set_class_counts(torch.tensor(COUNTS))
    return loss


def _call(loss: nn.Module, s: torch.Tensor, t: torch.Tensor, y: Any) -> torch.Tensor:
    return loss(Knowledge({"logits": s}), Knowledge({"logits": t}), y)


# the losses keep their weights in float32: the references round theirs the same way
WEIGHTS = {
    kind: (spec, np.float32(w).astype(np.float64))
    for kind, (spec, w) in {
        "list": ([0.5, 2.0, 1.0, 3.0], np.array([0.5, 2.0, 1.0, 3.0])),
        "balanced": ("balanced", np_balanced(COUNTS)),
        "effective": ("effective", np_effective(COUNTS, BETA)),
    }.items()
}


# ------------------------------------------------------------------------------- weights


def test_balanced_weights_match_scikit_learn() -> None:
    loss = build_loss("ce", {"class_weights": "balanced"})
    labels = np.array([0] * 5 + [1] * 2 + [2] * 9)
    loss.set_class_counts(torch.bincount(torch.as_tensor(labels)))
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(loss.class_weight.numpy(), expected, rtol=1e-6)


def test_effective_weights_follow_the_paper() -> None:
    loss = build_loss("kd", {"class_weights": "effective", "effective_beta": BETA})
    loss.set_class_counts(torch.tensor(COUNTS))
    w = loss.class_weight.double().numpy()
    np.testing.assert_allclose(w, np_effective(COUNTS, BETA), rtol=1e-6)
    assert w.sum() == pytest.approx(C, rel=1e-6)
    assert w[3] == 0 and w[2] > w[1] > w[0]  # rarer classes weigh more; the empty one nothing
    # beta = 0: every present class counts once (the effective number is 1)
    plain = build_loss("kd", {"class_weights": "effective", "effective_beta": 0.0})
    plain.set_class_counts(torch.tensor([7, 1, 3]))
    torch.testing.assert_close(plain.class_weight, torch.ones(3))


def test_a_class_without_examples_gets_weight_zero_not_inf() -> None:
    loss = build_loss("ce", {"class_weights": "balanced"})
    loss.set_class_counts(torch.tensor(COUNTS))
    assert torch.isfinite(loss.class_weight).all() and loss.class_weight[3] == 0


# ------------------------------------------------------------------------------- values


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_ce_matches_numpy(kind: str, eps: float) -> None:
    spec, w = WEIGHTS[kind]
    s, t, y = _data()
    loss = _weighted("ce", spec, label_smoothing=eps, effective_beta=BETA)
    got = float(_call(loss, s, t, y))
    assert got == pytest.approx(np_ce(s.numpy(), y.numpy(), w, eps), rel=1e-10)
    q = torch.softmax(torch.randn(len(y), C, dtype=torch.float64), dim=1)
    got = float(_call(loss, s, t, q))
    assert got == pytest.approx(np_ce_probs(s.numpy(), q.numpy(), w, eps), rel=1e-10)


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_matches_numpy(kind: str, temp: float) -> None:
    spec, w = WEIGHTS[kind]
    s, t, y = _data(1)
    loss = _weighted("kd", spec, temperature=temp, effective_beta=BETA)
    got = float(_call(loss, s, t, y))
    assert got == pytest.approx(np_kd(s.numpy(), t.numpy(), y.numpy(), w, temp), rel=1e-10)
    # (B, C) one-hot labels are reduced to their class
    onehot = F.one_hot(y, C).double()
    assert float(_call(loss, s, t, onehot)) == pytest.approx(got, rel=1e-12)


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
@pytest.mark.parametrize(("name", "ref"), [("dkd", ref_dkd), ("nkd", ref_nkd)])
def test_dkd_and_nkd_take_a_weighted_mean(name: str, ref: Callable, kind: str) -> None:
    spec, w = WEIGHTS[kind]
    s, t, y = _data(6)
    loss = _weighted(name, spec, temperature=2.0, effective_beta=BETA)
    a, b, labels = s.numpy(), t.numpy(), y.numpy()
    rows = np.array(
        [ref(a[i : i + 1], b[i : i + 1], labels[i : i + 1], temperature=2.0) for i in range(len(y))]
    )
    expected = (w[labels] * rows).sum() / w[labels].sum()
    assert float(_call(loss, s, t, y)) == pytest.approx(expected, rel=1e-10)


def test_kd_weighs_examples_by_their_class() -> None:
    s, t, y = _data(2)
    loss = _weighted("kd", [1.0, 0.0, 0.0, 0.0])
    only = y == 0
    expected = build_loss("kd").double()(
        Knowledge({"logits": s[only]}), Knowledge({"logits": t[only]}), None
    )
    torch.testing.assert_close(_call(loss, s, t, y), expected)
    # a batch of weight-0 classes only: 0, not NaN, and no gradient
    s = s.clone().requires_grad_()
    zero = _call(loss, s, t, torch.full_like(y, 1))
    zero.backward()
    assert float(zero.detach()) == 0 and torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("name", ["ce", "kd", "dkd", "nkd"])
@pytest.mark.parametrize("kind", ["list", "balanced", "effective"])
def test_gradcheck(name: str, kind: str) -> None:
    spec, _ = WEIGHTS[kind]
    s, t, y = _data(3, batch=5)
    params = {"label_smoothing": 0.1} if name == "ce" else {"temperature": 2.0}
    loss = _weighted(name, spec, **params)
    s.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: _call(loss, z, t, y), (s,))


def test_none_is_the_old_loss_bit_for_bit() -> None:
    s, t, y = _data(4)
    s, t = s.float(), t.float()
    ce = build_loss("ce", {"label_smoothing": 0.1})
    assert torch.equal(_call(ce, s, t, y), F.cross_entropy(s, y, label_smoothing=0.1))
    kd = build_loss("kd", {"temperature": 3.0})
    old = 9.0 * F.kl_div(
        F.log_softmax(s / 3.0, 1), F.log_softmax(t / 3.0, 1), reduction="batchmean", log_target=True
    )
    assert torch.equal(_call(kd, s, t, None), old)
    assert not kd.needs().target and kd.class_weight is None  # kd reads no labels then


def test_equal_weights_give_the_unweighted_loss() -> None:
    s, t, y = _data(5)
    for name in ("ce", "kd"):
        plain = build_loss(name).double()
        weighted = build_loss(name, {"class_weights": [2.0] * C}).double()
        torch.testing.assert_close(_call(weighted, s, t, y), _call(plain, s, t, y))


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["ce", "kd"])
@pytest.mark.parametrize("kind", ["balanced", "effective"])
def test_missing_counts_is_a_clear_error(name: str, kind: str) -> None:
    loss = build_loss(name, {"class_weights": kind})
    s, t, y = _data()
    with pytest.raises(ConfigError, match=f"class_weights: {kind} needs the class counts"):
        _call(loss, s.float(), t.float(), y)


def test_the_distiller_hands_counts_to_the_losses_that_ask() -> None:
    ce = build_loss("ce", {"class_weights": "balanced"})
    kd = build_loss("kd")
    listed = build_loss("kd", {"class_weights": [1.0, 1.0, 1.0, 1.0]})
    teacher = Teacher(nn.Linear(4, C))
    terms = [Term("ce", ce), Term("kd", kd), Term("listed", listed)]
    distiller = Distiller(Student(nn.Linear(4, C)), terms, teacher=teacher)
    assert distiller.needs_class_counts
    assert distiller.needs["listed"].target and not distiller.needs["kd"].target
    distiller.set_class_counts(torch.tensor(COUNTS))
    np.testing.assert_allclose(ce.class_weight.numpy(), np_balanced(COUNTS), rtol=1e-6)
    assert kd.class_weight is None
    with pytest.raises(ConfigError, match="has 4 weights, and the training data has 3 classes"):
        distiller.set_class_counts(torch.tensor([1, 2, 3]))
    with pytest.raises(ConfigError, match="non-negative integers"):
        distiller.set_class_counts(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    plain = Distiller(Student(nn.Linear(4, C)), [Term("kd", kd)], teacher=teacher)
    assert not plain.needs_class_counts


def test_weights_of_another_width_are_a_shape_error() -> None:
    loss = build_loss("kd", {"class_weights": [1.0, 2.0]})
    s, t, y = _data()
    with pytest.raises(ShapeError, match="2 class weights for logits of 4 classes"):
        _call(loss, s, t, y)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"class_weights": [1.0, -1.0]}, "finite numbers >= 0"),
        ({"class_weights": [0.0, 0.0]}, "all 0"),
        ({"class_weights": "effective", "effective_beta": 1.0}, "effective_beta must be in"),
        ({"class_weights": "often"}, "class_weights"),
    ],
)
def test_bad_class_weights_are_refused(params: dict[str, Any], message: str) -> None:
    for name in ("ce", "kd"):
        with pytest.raises(ConfigError, match=message):
            build_loss(name, params)


def test_weights_stay_out_of_checkpoints() -> None:
    """The counts come from the data each run (a resumed one too): no new state dict key."""
    loss = build_loss("kd", {"class_weights": "balanced"})
    loss.set_class_counts(torch.tensor(COUNTS))
    assert "class_weight" not in loss.state_dict()


# ------------------------------------------------------------------------------- search spaces


def test_search_spaces_name_constructor_parameters_and_validate() -> None:
    found = {}
    for name in LOSSES.names():
        cls = LOSSES.resolve(name)
        params = inspect.signature(cls.__init__).parameters
        for key, dim in cls.search_space.items():
            assert key in params, f"{name}.search_space names {key!r}, not a parameter"
            SearchDim.model_validate(dim)
            default = params[key].default
            if isinstance(default, float) and "low" in dim:  # the default lies in the range
                assert dim["low"] <= default <= dim["high"], (name, key)
        found[name] = cls.search_space
    assert found["kd"] == {"temperature": {"low": 1.0, "high": 8.0, "log": True}}
    assert {"alpha", "beta", "temperature"} <= set(found["dkd"])
    assert "label_smoothing" in found["ce"] and found["fitnet"] == {}
