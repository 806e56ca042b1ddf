"""The logit losses, checked against independent NumPy derivations of each paper's formula, against
torchdistill 1.1.5 where it has the same loss, by gradcheck, by invariants and by hand-worked
examples."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from ref_logit import (
    ref_ce,
    ref_dist,
    ref_dkd,
    ref_kd,
    ref_logit_std_kd,
    ref_nkd,
)

from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.knowledge import Knowledge
from crossdistill.core.wrappers import Student, Teacher
from crossdistill.errors import ConfigError, KnowledgeError, ShapeError, UnknownNameError
from crossdistill.losses import LOSSES, Needs, build_loss


@dataclass
class Case:
    name: str
    ref: Callable[..., float]
    params: dict[str, Any] = field(default_factory=dict)
    min_batch: int = 1
    min_classes: int = 1


CASES = [
    Case("ce", ref_ce),
    Case("ce", ref_ce, {"label_smoothing": 0.1}),
    Case("kd", ref_kd),
    Case("kd", ref_kd, {"temperature": 1.0}),
    Case("dkd", ref_dkd, min_classes=2),
    Case("dkd", ref_dkd, {"alpha": 0.5, "beta": 2.0, "temperature": 1.5}, min_classes=2),
    Case("nkd", ref_nkd, min_classes=2),
    Case("nkd", ref_nkd, {"temperature": 3.0, "gamma": 0.5}, min_classes=2),
    Case("logit_std_kd", ref_logit_std_kd, min_classes=2),
    Case("logit_std_kd", ref_logit_std_kd, {"temperature": 1.0}, min_classes=2),
    # np.corrcoef has no epsilon: a negligible eps makes the comparison exact; the default eps is
    # compared with torchdistill below. Pearson across the batch needs two samples.
    Case("dist", ref_dist, {"eps": 1e-20}, min_batch=2, min_classes=2),
    Case("dist", ref_dist, {"beta": 2.0, "gamma": 0.5, "temperature": 4.0, "eps": 1e-20}, 2, 2),
]
SHAPES = [(1, 2), (1, 7), (2, 2), (3, 5), (8, 10), (32, 100)]
CASE_IDS = [
    f"{c.name}-{'-'.join(f'{k}={v}' for k, v in c.params.items()) or 'default'}" for c in CASES
]


def random_inputs(shape, seed, dtype=torch.float64, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(shape, generator=g, dtype=dtype) * scale
    t = torch.randn(shape, generator=g, dtype=dtype) * scale
    y = torch.randint(0, shape[1], (shape[0],), generator=g)
    return s, t, y


def K(z: torch.Tensor, source: str = "model") -> Knowledge:
    return Knowledge({"logits": z}, source=source)


def run_loss(loss, s, t, y):
    return loss(K(s, "student"), K(t, "teacher"), y)


# --------------------------------------------------------------------------------------------
# 1. the NumPy derivations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_numpy_reference(case: Case, shape: tuple[int, int]) -> None:
    if shape[0] < case.min_batch or shape[1] < case.min_classes:
        pytest.skip("the formula is undefined for this shape")
    loss = build_loss(case.name, case.params)
    for seed in range(3):
        s, t, y = random_inputs(shape, seed)
        expected = case.ref(s.numpy(), t.numpy(), y.numpy(), **case.params)
        got64 = run_loss(loss, s, t, y)
        assert got64.dim() == 0 and got64.dtype == torch.float64
        np.testing.assert_allclose(got64.item(), expected, rtol=1e-9, atol=1e-10)
        got32 = run_loss(loss, s.float(), t.float(), y)
        assert got32.dtype == torch.float32
        np.testing.assert_allclose(got32.item(), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# 2. gradcheck in float64
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck(case: Case) -> None:
    loss = build_loss(case.name, case.params)
    s, t, y = random_inputs((3, 5), seed=7, scale=1.5)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: run_loss(loss, z, t, y), (s,), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# 3. invariants
# --------------------------------------------------------------------------------------------

KD_LIKE = [("kd", {}), ("dkd", {}), ("logit_std_kd", {}), ("dist", {"eps": 1e-15})]


@pytest.mark.parametrize(("name", "params"), KD_LIKE)
def test_zero_and_stationary_when_student_equals_teacher(name: str, params: dict) -> None:
    loss = build_loss(name, params)
    t, _, y = random_inputs((6, 9), seed=3)
    s = t.clone().requires_grad_(True)
    value = run_loss(loss, s, t, y)
    (grad,) = torch.autograd.grad(value, s)
    assert abs(value.item()) < 1e-12
    assert grad.abs().max().item() < 1e-9


@pytest.mark.parametrize("name", ["kd", "dkd", "nkd", "logit_std_kd", "dist"])
def test_invariant_to_a_constant_added_to_each_students_logits(name: str) -> None:
    loss = build_loss(name)
    s, t, y = random_inputs((5, 8), seed=11)
    shift = torch.linspace(-50, 50, 5, dtype=s.dtype)[:, None]
    torch.testing.assert_close(run_loss(loss, s + shift, t, y), run_loss(loss, s, t, y))


def test_logit_std_kd_is_invariant_to_the_logits_scale() -> None:
    # The point of the paper: after Z-scoring, only the logits' relations matter, not their range.
    loss = build_loss("logit_std_kd", {"eps": 1e-12})
    s, t, y = random_inputs((5, 8), seed=5)
    scale = torch.tensor([0.1, 1.0, 3.0, 10.0, 50.0], dtype=s.dtype)[:, None]
    torch.testing.assert_close(run_loss(loss, s * scale, t / scale, y), run_loss(loss, s, t, y))


def test_kd_high_temperature_gradient_is_independent_of_temperature() -> None:
    # Hinton et al. §2.1: for zero-mean logits and large T, dKL/dz_i ≈ (z_i - v_i) / (C T²) per
    # sample; the T² factor makes the gradient of the loss ≈ (s - t) / (B C), whatever T.
    s, t, _ = random_inputs((4, 10), seed=2, scale=1.0)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    limit = (s - t) / (4 * 10)
    for temperature in (100.0, 1000.0):
        z = s.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(
            run_loss(build_loss("kd", {"temperature": temperature}), z, t, None), z
        )
        torch.testing.assert_close(grad, limit, rtol=0.05, atol=1e-3 / temperature)
    # and at moderate T the loss changes with T, i.e. T is really used
    low, high = (run_loss(build_loss("kd", {"temperature": T}), s, t, None) for T in (1.0, 4.0))
    assert not torch.isclose(low, high)


def test_dkd_recomposes_classic_kd() -> None:
    # Zhao et al. Eq. 6: KL(p^t || p^s) = TCKD + (1 - p^t_y) · NCKD, per sample.
    for seed in range(5):
        s, t, y = random_inputs((1, 7), seed)
        temperature = 3.0
        tckd = run_loss(build_loss("dkd", {"alpha": 1.0, "beta": 0.0, "temperature": 3.0}), s, t, y)
        nckd = run_loss(build_loss("dkd", {"alpha": 0.0, "beta": 1.0, "temperature": 3.0}), s, t, y)
        p_t_y = torch.softmax(t / temperature, dim=1)[0, y[0]]
        kd = run_loss(build_loss("kd", {"temperature": temperature}), s, t, y)
        torch.testing.assert_close(tckd + (1 - p_t_y) * nckd, kd)


def test_dkd_on_two_classes_is_kd() -> None:
    # With two classes the non-target distribution is a single point mass: NCKD = 0, TCKD = KD.
    s, t, y = random_inputs((6, 2), seed=1)
    dkd = run_loss(build_loss("dkd", {"alpha": 1.0, "beta": 8.0}), s, t, y)
    torch.testing.assert_close(dkd, run_loss(build_loss("kd"), s, t, y))


def test_nkd_decomposes_the_soft_cross_entropy() -> None:
    # Yang et al. Eq. 3-5: -Σ_k T_k log S_k = -T_y log S_y - (1-T_y) log(1-S_y) + (1-T_y)·NCE,
    # where NCE = -Σ_{k≠y} T̂_k log Ŝ_k is NKD's non-target term at λ = 1.
    for seed in range(5):
        s, t, y = random_inputs((1, 6), seed)
        target_part = run_loss(build_loss("nkd", {"gamma": 0.0}), s, t, y)
        nce = run_loss(build_loss("nkd", {"gamma": 1.0}), s, t, y) - target_part
        p_s, p_t = torch.softmax(s, 1)[0], torch.softmax(t, 1)[0]
        soft_ce = -(p_t * p_s.log()).sum()
        rebuilt = target_part - (1 - p_t[y[0]]) * torch.log1p(-p_s[y[0]]) + (1 - p_t[y[0]]) * nce
        torch.testing.assert_close(rebuilt, soft_ce)


def test_nkd_non_target_term_is_stationary_at_the_teacher() -> None:
    t, _, y = random_inputs((4, 6), seed=9)
    s = t.clone().requires_grad_(True)
    non_target = run_loss(build_loss("nkd", {"temperature": 2.0, "gamma": 1.0}), s, t, y)
    non_target = non_target - run_loss(
        build_loss("nkd", {"temperature": 2.0, "gamma": 0.0}), s, t, y
    )
    (grad,) = torch.autograd.grad(non_target, s)
    assert grad.abs().max().item() < 1e-12


def test_dist_terms_are_weighted_independently() -> None:
    s, t, y = random_inputs((8, 10), seed=4)
    both = run_loss(build_loss("dist", {"beta": 2.0, "gamma": 3.0, "temperature": 2.0}), s, t, y)
    inter = run_loss(build_loss("dist", {"beta": 1.0, "gamma": 0.0, "temperature": 2.0}), s, t, y)
    intra = run_loss(build_loss("dist", {"beta": 0.0, "gamma": 1.0, "temperature": 2.0}), s, t, y)
    torch.testing.assert_close(both, 2 * inter + 3 * intra)
    # a batch of one leaves the intra-class term constant (documented): γ·τ² with no gradient
    s1 = s[:1].clone().requires_grad_(True)
    one = run_loss(
        build_loss("dist", {"beta": 0.0, "gamma": 1.0, "temperature": 2.0}), s1, t[:1], y
    )
    (grad,) = torch.autograd.grad(one, s1)
    assert one.item() == pytest.approx(4.0) and torch.all(grad == 0)


# --------------------------------------------------------------------------------------------
# 5. hand-worked examples
# --------------------------------------------------------------------------------------------


def test_kd_worked_example_two_classes() -> None:
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)  # p_s = [1/2, 1/2] at any T
    t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    # T = 1: p_t = [3/4, 1/4]; KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812
    kd1 = run_loss(build_loss("kd", {"temperature": 1.0}), s, t, None)
    assert kd1.item() == pytest.approx(0.130812036, abs=1e-9)
    # T = 2: t/T = [ln √3, 0], p_t = [√3, 1]/(1+√3) = [0.633975, 0.366025];
    # KL = 0.633975 ln(1.267949) + 0.366025 ln(0.732051) = 0.150504 - 0.114163 = 0.036341;
    # × T² = 4 → 0.145363
    kd2 = run_loss(build_loss("kd", {"temperature": 2.0}), s, t, None)
    assert kd2.item() == pytest.approx(0.145363131, abs=1e-9)


def test_ce_worked_example() -> None:
    s = torch.tensor([[math.log(1.0), math.log(2.0), math.log(5.0)]])  # softmax = [1/8, 2/8, 5/8]
    y = torch.tensor([2])
    # -ln(5/8) = ln 1.6 = 0.470004
    ce = run_loss(build_loss("ce"), s, s, y)
    assert ce.item() == pytest.approx(0.470003629, abs=1e-6)
    # ε = 0.3, C = 3: q = [0.1, 0.1, 0.8];
    # -(0.1 ln 1/8 + 0.1 ln 1/4 + 0.8 ln 5/8) = 0.207944 + 0.138629 + 0.376003 = 0.722576
    smoothed = run_loss(build_loss("ce", {"label_smoothing": 0.3}), s, s, y)
    assert smoothed.item() == pytest.approx(0.722576494, abs=1e-6)
    # class-probability targets are accepted too (e.g. after mixup)
    probs = torch.tensor([[0.1, 0.1, 0.8]])
    assert run_loss(build_loss("ce"), s, s, probs).item() == pytest.approx(0.722576494, abs=1e-6)


def test_dkd_worked_example() -> None:
    # C = 3, y = 0, T = 1: student uniform, teacher softmax = [1/2, 1/4, 1/4].
    # b^s = [1/3, 2/3], b^t = [1/2, 1/2]: TCKD = 1/2 ln(3/2) + 1/2 ln(3/4) = 0.202733 - 0.143841
    # = 0.058892; non-target distributions are both [1/2, 1/2], NCKD = 0.
    s = torch.zeros(1, 3, dtype=torch.float64)
    t = torch.tensor([[math.log(2.0), 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    value = run_loss(build_loss("dkd", {"alpha": 1.0, "beta": 8.0, "temperature": 1.0}), s, t, y)
    assert value.item() == pytest.approx(0.5 * math.log(1.5) + 0.5 * math.log(0.75), abs=1e-12)
    assert value.item() == pytest.approx(0.058891517, abs=1e-9)


# --------------------------------------------------------------------------------------------
# 4. torchdistill 1.1.5
# --------------------------------------------------------------------------------------------

td = pytest.importorskip("torchdistill.losses.mid_level")


def io(z: torch.Tensor) -> dict:
    return {".": {"output": z}}


def value_and_grad(fn, s):
    s = s.clone().requires_grad_(True)
    value = fn(s)
    (grad,) = torch.autograd.grad(value, s)
    return value.detach(), grad


def assert_same(ours, theirs, s, atol):
    v1, g1 = value_and_grad(ours, s)
    v2, g2 = value_and_grad(theirs, s)
    assert (v1 - v2).abs().item() <= atol * max(1.0, v2.abs().item())
    assert (g1 - g2).abs().max().item() <= atol


PATH = (".", "output", ".", "output")
TD_SHAPES = [(1, 5), (4, 10), (16, 100)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", TD_SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_torchdistill(dtype, shape, temperature) -> None:
    # Convention: torchdistill's KDLoss with alpha = 0 returns the bare KL, without T²;
    # with alpha > 0 and targets it returns alpha·CE + beta·T²·KL. Ours is always T²·KL.
    s, t, y = random_inputs(shape, seed=21, dtype=dtype)
    atol = 1e-12 if dtype == torch.float64 else 2e-6
    kd, ce = build_loss("kd", {"temperature": temperature}), build_loss("ce")
    bare = td.KDLoss(*PATH, temperature=temperature, alpha=0.0)
    assert_same(
        lambda z: run_loss(kd, z, t, y), lambda z: temperature**2 * bare(io(z), io(t)), s, atol
    )
    mixed = td.KDLoss(*PATH, temperature=temperature, alpha=0.3, beta=0.7)
    assert_same(
        lambda z: 0.3 * run_loss(ce, z, t, y) + 0.7 * run_loss(kd, z, t, y),
        lambda z: mixed(io(z), io(t), targets=y),
        s,
        atol,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", TD_SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_logit_std_kd_matches_torchdistill(dtype, shape, temperature) -> None:
    # Same T² convention as KDLoss (ours = T² × torchdistill's alpha = 0 value); same std
    # (torch.std, Bessel-corrected) and eps placement.
    s, t, y = random_inputs(shape, seed=22, dtype=dtype)
    atol = 1e-12 if dtype == torch.float64 else 2e-6
    ours = build_loss("logit_std_kd", {"temperature": temperature, "eps": 1e-7})
    theirs = td.LogitStdKDLoss(*PATH, temperature=temperature, eps=1e-7, alpha=0.0)
    assert_same(
        lambda z: run_loss(ours, z, t, y),
        lambda z: temperature**2 * theirs(io(z), io(t)),
        s,
        atol,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(2, 5), (4, 10), (16, 100)])
@pytest.mark.parametrize(("beta", "gamma", "temperature"), [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)])
def test_dist_matches_torchdistill(dtype, shape, beta, gamma, temperature) -> None:
    # Convention difference: ours adds eps to the norm product, ρ = <u,v> / (‖u‖‖v‖ + eps), as
    # the authors' code does; torchdistill's F.cosine_similarity clamps each norm at eps instead.
    # With a negligible eps the two formulas agree, values and gradients.
    s, t, y = random_inputs(shape, seed=23, dtype=dtype)
    atol = 1e-12 if dtype == torch.float64 else 2e-6
    params = {"beta": beta, "gamma": gamma, "temperature": temperature}
    ours = build_loss("dist", {**params, "eps": 1e-30})
    theirs = td.DISTLoss(*PATH, beta=beta, gamma=gamma, tau=temperature, eps=1e-30)
    assert_same(lambda z: run_loss(ours, z, t, y), lambda z: theirs(io(z), io(t)), s, atol)


def test_dist_eps_convention_differs_from_torchdistill_only_on_near_constant_classes() -> None:
    # At the default eps = 1e-8 the conventions differ where a class's probability hardly varies
    # over the batch (‖u‖‖v‖ not >> eps), which happens for rare classes with many classes:
    # there "+ eps" pulls that class's correlation towards 0. Measured on these inputs (loss ≈ 2):
    # |Δ value| ≈ 2e-5, |Δ grad| ≈ 2e-5. Few classes, well-spread probabilities: |Δ| < 1e-7.
    ours, theirs = build_loss("dist"), td.DISTLoss(*PATH, eps=1e-8)
    s, t, y = random_inputs((16, 100), seed=23)
    v1, g1 = value_and_grad(lambda z: run_loss(ours, z, t, y), s)
    v2, g2 = value_and_grad(lambda z: theirs(io(z), io(t)), s)
    assert 0 < (v1 - v2).abs().item() < 1e-4 and (g1 - g2).abs().max().item() < 1e-4
    s, t, y = random_inputs((16, 5), seed=23, scale=1.0)
    v1, g1 = value_and_grad(lambda z: run_loss(ours, z, t, y), s)
    v2, g2 = value_and_grad(lambda z: theirs(io(z), io(t)), s)
    assert (v1 - v2).abs().item() < 1e-7 and (g1 - g2).abs().max().item() < 1e-7


# --------------------------------------------------------------------------------------------
# 6. registry and hyper-parameter errors
# --------------------------------------------------------------------------------------------


def test_all_registered_with_their_needs() -> None:
    expected = {
        "ce": Needs(("logits",), (), True),
        "kd": Needs(("logits",), ("logits",), False),
        "dkd": Needs(("logits",), ("logits",), True),
        "nkd": Needs(("logits",), ("logits",), True),
        "logit_std_kd": Needs(("logits",), ("logits",), False),
        "dist": Needs(("logits",), ("logits",), False),
        "bce_kd": Needs(("logits",), ("logits",), False),
    }
    assert set(expected) <= set(LOSSES.names())
    for name, needs in expected.items():
        assert build_loss(name).needs() == needs


def test_bad_hyper_parameter_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        build_loss("kd", {"temperature": "hot"})


def test_unknown_hyper_parameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="temp"):
        build_loss("kd", {"temp": 2.0})


def test_unknown_loss_lists_known_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_loss("kdd")
    assert "'kd'" in str(info.value) and "known:" in str(info.value)


@pytest.mark.parametrize(
    ("name", "params", "word"),
    [
        ("kd", {"temperature": 0.0}, "temperature"),
        ("kd", {"temperature": -1.0}, "temperature"),
        ("kd", {"temperature": float("nan")}, "temperature"),
        ("dkd", {"beta": -1.0}, "beta"),
        ("nkd", {"gamma": float("inf")}, "gamma"),
        ("logit_std_kd", {"eps": 0.0}, "eps"),
        ("dist", {"temperature": 0.0}, "temperature"),
        ("ce", {"label_smoothing": 1.5}, "label_smoothing"),
        ("bce_kd", {"temperature": 0.0}, "temperature"),
        ("bce_kd", {"pos_weight": -1.0}, "pos_weight"),
    ],
)
def test_out_of_range_hyper_parameter(name: str, params: dict, word: str) -> None:
    # a ValueError that the CLI also reports as a ConfigError
    with pytest.raises(ValueError, match=word) as info:
        build_loss(name, params)
    assert isinstance(info.value, ConfigError)
    with pytest.raises(ValueError, match=word):
        LOSSES.get(name)(**params)


def test_bad_inputs_are_reported() -> None:
    s, t, y = random_inputs((4, 5), seed=0)
    with pytest.raises(ShapeError, match="same shape"):
        run_loss(build_loss("kd"), s, t[:, :4], y)
    with pytest.raises(ValueError, match="target"):
        run_loss(build_loss("dkd"), s, t, None)
    with pytest.raises(ShapeError, match="class indices"):
        run_loss(build_loss("nkd"), s, t, y[:3])
    with pytest.raises(KnowledgeError, match="logits"):
        build_loss("kd")(K(s), Knowledge({"embedding": t}, source="teacher"), None)


def test_soft_labels_reduce_to_their_argmax() -> None:
    s, t, y = random_inputs((4, 5), seed=0)
    onehot = torch.nn.functional.one_hot(y, 5).double() * 0.9 + 0.02
    for name in ("dkd", "nkd"):
        loss = build_loss(name)
        torch.testing.assert_close(run_loss(loss, s, t, onehot), run_loss(loss, s, t, y))


# --------------------------------------------------------------------------------------------
# 7. mixed precision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ce", "kd", "dkd", "nkd", "logit_std_kd", "dist", "bce_kd"])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_finite_scalar_under_bfloat16_autocast(name: str, scale: float) -> None:
    torch.manual_seed(0)
    head_s, head_t = torch.nn.Linear(16, 10), torch.nn.Linear(16, 10)
    x = torch.randn(8, 16)
    y = torch.randint(0, 10, (8,))
    loss = build_loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, t = head_s(x) * scale, head_t(x) * scale
        assert s.dtype == torch.bfloat16
        value = run_loss(loss, s, t, y)
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in head_s.parameters())
    # close to the float32 value of the same (bf16-rounded) logits
    torch.testing.assert_close(value, run_loss(loss, s.float(), t.float(), y), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# 8. Knowledge keys: `student` / `teacher` name the logits a loss reads
# --------------------------------------------------------------------------------------------

# every logit loss that reads both sides' logits (ce reads only the student's, ofa a feature)
KEYED = [
    ("kd", {}),
    ("dkd", {}),
    ("nkd", {}),
    ("logit_std_kd", {}),
    ("dist", {}),
    ("bce_kd", {"temperature": 2.0, "pos_weight": 2.0}),
]


def renamed(s, t):
    """The same logits under other keys, next to ``logits`` of another label space (which a
    loss reading the configured keys must ignore)."""
    g = torch.Generator().manual_seed(99)
    other = torch.randn(s.shape[0], s.shape[1] + 3, generator=g, dtype=s.dtype)
    student = Knowledge({"logits": other, "teacher_logits": s}, source="student")
    teacher = Knowledge({"logits": other[:, :2], "scores": t}, source="teacher")
    return student, teacher


@pytest.mark.parametrize(("name", "params"), KEYED, ids=[n for n, _ in KEYED])
def test_keys_read_the_named_logits_bit_for_bit(name: str, params: dict) -> None:
    default = build_loss(name, params)
    keyed = build_loss(name, {**params, "student": "teacher_logits", "teacher": "scores"})
    assert default.needs().student == ("logits",) and default.needs().teacher == ("logits",)
    assert keyed.needs() == Needs(("teacher_logits",), ("scores",), default.needs().target)
    s, t, y = random_inputs((6, 8), seed=31)
    s.requires_grad_(True)
    v1 = run_loss(default, s, t, y)
    (g1,) = torch.autograd.grad(v1, s)
    v2 = keyed(*renamed(s, t), y)
    (g2,) = torch.autograd.grad(v2, s)
    assert torch.equal(v1, v2) and torch.equal(g1, g2)


def test_ce_reads_the_named_student_logits() -> None:
    s, t, y = random_inputs((6, 8), seed=32)
    keyed = build_loss("ce", {"student": "teacher_logits", "label_smoothing": 0.1})
    assert keyed.needs() == Needs(("teacher_logits",), (), True)
    default = build_loss("ce", {"label_smoothing": 0.1})
    assert torch.equal(keyed(*renamed(s, t), y), run_loss(default, s, t, y))
    with pytest.raises(ConfigError, match="teacher"):  # ce reads no teacher: no such param
        build_loss("ce", {"teacher": "logits"})


def test_ofa_reads_the_named_teacher_logits() -> None:
    torch.manual_seed(0)
    default = build_loss("ofa", {"student": "features/f", "width": 8}).double()
    keyed = build_loss("ofa", {"student": "features/f", "teacher": "scores", "width": 8}).double()
    assert keyed.needs() == Needs(("features/f",), ("scores",), True)
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    _, t, y = random_inputs((4, 7), seed=33)
    student = Knowledge({"features/f": x})
    v1 = default(student, Knowledge({"logits": t}), y)
    keyed.load_state_dict(default.state_dict())  # the same (lazily sized) branch
    v2 = keyed(student, Knowledge({"logits": t[:, :2], "scores": t}), y)
    assert torch.equal(v1, v2)
    with pytest.raises(ShapeError, match=r"\(batch, classes\) in the teacher's 'scores'"):
        keyed(student, Knowledge({"scores": t[:, :, None]}), y)


@pytest.mark.parametrize("name", ["ce", "kd", "dkd", "nkd", "logit_std_kd", "dist", "bce_kd"])
def test_a_missing_named_key_is_reported_even_when_logits_exist(name: str) -> None:
    s, t, y = random_inputs((4, 5), seed=34)
    loss = build_loss(name, {"student": "teacher_logits"})
    with pytest.raises(KnowledgeError, match="'teacher_logits'"):
        run_loss(loss, s, t, y)
    if name != "ce":
        loss = build_loss(name, {"teacher": "scores"})
        with pytest.raises(KnowledgeError, match="'scores'"):
            run_loss(loss, s, t, y)


def test_shape_errors_name_the_keys() -> None:
    s, t, y = random_inputs((4, 5), seed=35)
    loss = build_loss("kd", {"student": "teacher_logits", "teacher": "scores"})
    student = Knowledge({"teacher_logits": s})
    with pytest.raises(ShapeError, match=r"student 'teacher_logits' \(4, 5\).*'scores' \(4, 4\)"):
        loss(student, Knowledge({"scores": t[:, :4]}), y)
    with pytest.raises(ShapeError, match=r"teacher's 'scores'") as info:
        loss(student, Knowledge({"scores": t[:, :, None]}), y)
    assert "`teacher:` param" in str(info.value)
    with pytest.raises(ShapeError, match="same shape") as info:  # the default keys
        run_loss(build_loss("kd"), s, t[:, :4], y)
    assert "student: teacher_logits" in str(info.value)  # the hint: a second head


def test_a_teacher_of_another_label_space_through_the_distiller() -> None:
    # The case: a 20-class teacher, a 4-class data set. The student has a data head
    # (`logits`, trained by ce on the labels) and a teacher head (`teacher_logits`, trained by
    # kd); the Distiller's label-space check passes, and each head is trained by its loss only.
    torch.manual_seed(0)

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(6, 8)
            self.data_head, self.teacher_head = torch.nn.Linear(8, 4), torch.nn.Linear(8, 20)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return self.data_head(h), self.teacher_head(h)

    student = Student(TwoHeads(), outputs=["logits", "teacher_logits"])
    teacher = Teacher(torch.nn.Linear(6, 20))
    terms = [
        Term("ce", build_loss("ce")),
        Term("kd", build_loss("kd", {"student": "teacher_logits"})),
    ]
    distiller = Distiller(student, terms, teacher)
    x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
    batch = {"views": {"student": x, "teacher": x}, "target": y}
    distiller.check(batch, num_classes=4)
    _, values = distiller(batch)
    out = student(x)
    torch.testing.assert_close(values["ce"], run_loss(build_loss("ce"), out["logits"], None, y))
    torch.testing.assert_close(
        values["kd"], run_loss(build_loss("kd"), out["teacher_logits"], teacher(x)["logits"], y)
    )
    head = student.model
    (g_data,) = torch.autograd.grad(values["kd"], head.data_head.weight, allow_unused=True)
    assert g_data is None  # kd trains the teacher head (and the body), not the data head
    # without the key, kd reads the 4-class data head: refused with both fixes in the hint
    plain = Distiller(student, [Term("kd", build_loss("kd"))], teacher)
    with pytest.raises(ShapeError, match=r"\(5, 4\).*\(5, 20\)"):
        plain.check(batch, num_classes=4)
