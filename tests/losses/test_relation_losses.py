"""The relation losses (sp, rkd, pkt, cc), checked against NumPy float64 derivations of the
papers' formulas (``ref_feature.py``), against torchdistill 1.1.5 where it computes the same
quantity, by gradcheck, by invariants and on bad inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from ref_feature import BENCH_CASES, ref_cc, ref_pkt, ref_rkd, ref_sp, td_cc, td_pkt, td_rkd, td_sp

from crossdistill.core.knowledge import EMBEDDING, Knowledge
from crossdistill.errors import ConfigError, KnowledgeError, ShapeError
from crossdistill.losses import build_loss

RELATION = ["sp", "rkd", "pkt", "cc"]


def value(
    name: str, params: dict[str, Any], s: torch.Tensor, t: torch.Tensor, keys=(EMBEDDING,) * 2
) -> torch.Tensor:
    loss = build_loss(name, params)
    student = Knowledge({keys[0]: s}, source="student")
    return loss(student, Knowledge({keys[1]: t}, source="teacher"), None)


def draw(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.tensor(draw((d, d), seed)))
    return q


# (loss, params, student shape, teacher shape, numpy reference); widths differ on purpose.
CASES = [
    ("sp", {}, (5, 4), (5, 9), ref_sp),
    ("sp", {}, (3, 2, 3, 3), (3, 12), ref_sp),
    ("sp", {}, (4, 3, 5), (4, 2, 2, 2), ref_sp),
    ("rkd", {}, (5, 4), (5, 9), ref_rkd),
    ("rkd", {}, (4, 2, 3, 3), (4, 7), ref_rkd),
    (
        "rkd",
        {"distance_weight": 1, "angle_weight": 2},
        (6, 3),
        (6, 5),
        lambda s, t: ref_rkd(s, t, 1, 2),
    ),
    ("rkd", {"distance_weight": 0}, (5, 3), (5, 4), lambda s, t: ref_rkd(s, t, 0.0)),
    ("rkd", {"angle_weight": 0}, (5, 3), (5, 4), lambda s, t: ref_rkd(s, t, angle_weight=0.0)),
    ("rkd", {}, (2, 3), (2, 4), ref_rkd),
    ("pkt", {}, (5, 4), (5, 9), ref_pkt),
    ("pkt", {}, (4, 2, 2, 3), (4, 3, 5), ref_pkt),
    ("pkt", {"eps": 1e-3}, (5, 4), (5, 6), lambda s, t: ref_pkt(s, t, eps=1e-3)),
    ("cc", {}, (5, 4), (5, 9), ref_cc),
    ("cc", {}, (4, 2, 2, 3), (4, 3, 5), ref_cc),
    ("cc", {"gamma": 1.0, "order": 3}, (5, 4), (5, 6), lambda s, t: ref_cc(s, t, 1.0, 3)),
    ("cc", {"normalize": False}, (5, 4), (5, 6), lambda s, t: ref_cc(s, t, normalize=False)),
]
IDS = [f"{c[0]}-{c[2]}-{c[3]}-{c[1]}" for c in CASES]


@pytest.mark.parametrize(("name", "params", "s_shape", "t_shape", "ref"), CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_reference(name, params, s_shape, t_shape, ref, seed):
    s, t = draw(s_shape, seed), draw(t_shape, seed + 100)
    expected = ref(s, t)
    got64 = value(name, params, torch.tensor(s), torch.tensor(t))
    assert got64.dtype == torch.float64 and got64.dim() == 0
    # atol: with two samples rkd is 0 up to rounding (both sides have the same potentials).
    np.testing.assert_allclose(got64.item(), expected, rtol=1e-9, atol=1e-14)
    got32 = value(name, params, torch.tensor(s).float(), torch.tensor(t).float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.item(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("name", "params", "s_shape", "t_shape", "ref"), CASES, ids=IDS)
def test_gradcheck(name, params, s_shape, t_shape, ref):
    s = torch.tensor(draw(s_shape, 3), requires_grad=True)
    t = torch.tensor(draw(t_shape, 4))
    assert torch.autograd.gradcheck(lambda x: value(name, params, x, t), (s,))


@pytest.mark.parametrize(
    ("name", "params", "grad_bound"),
    [
        ("sp", {}, 1e-12),
        ("rkd", {}, 1e-12),
        ("cc", {}, 1e-12),
        # PKT's ε inside the log makes the gradient at s = t of order ε, not exactly 0.
        ("pkt", {}, 1e-8),
        ("pkt", {"eps": 1e-14}, 1e-12),
    ],
)
def test_zero_with_zero_gradient_when_student_equals_teacher(name, params, grad_bound):
    t = torch.tensor(draw((5, 3, 2, 2), 5))
    s = t.clone().requires_grad_(True)
    loss = value(name, params, s, t)
    loss.backward()
    assert abs(loss.item()) < 1e-15
    assert s.grad.abs().max().item() < grad_bound


@pytest.mark.parametrize("name", RELATION)
def test_invariant_to_rotation_and_to_widening_with_zeros(name):
    """The four compare Gram-matrix functions, so any map of the student features that keeps
    ``Q Qᵀ`` keeps the loss: an orthogonal rotation, or padding to a wider space with zeros."""
    s, t = torch.tensor(draw((6, 5), 6)), torch.tensor(draw((6, 8), 7))
    base = value(name, {}, s, t)
    rotated = s @ orthogonal(5, 8)
    widened = torch.cat([s, torch.zeros(6, 11, dtype=s.dtype)], dim=1)
    torch.testing.assert_close(value(name, {}, rotated, t), base, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(value(name, {}, widened, t), base, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("name", "per_sample", "rtol"),
    [("sp", False, 1e-12), ("rkd", False, 1e-12), ("pkt", True, 1e-5), ("cc", True, 1e-12)],
)
def test_scale_invariance(name, per_sample, rtol):
    """SP's row normalization and RKD's mean-distance normalization remove a global scale; the
    cosine kernel of PKT (up to its ε in the norm) and CC's normalized features remove each
    sample's scale."""
    s, t = torch.tensor(draw((6, 5), 9)), torch.tensor(draw((6, 4), 10))
    scale = torch.tensor([0.5, 2.0, 3.0, 7.0, 0.25, 1.5], dtype=torch.float64)[:, None]
    scale = scale if per_sample else torch.tensor(4.5, dtype=torch.float64)
    torch.testing.assert_close(
        value(name, {}, s * scale, t), value(name, {}, s, t), rtol=rtol, atol=0
    )


def test_rkd_invariant_to_translation():
    s, t = torch.tensor(draw((6, 5), 11)), torch.tensor(draw((6, 4), 12))
    shifted = s + torch.tensor(draw((1, 5), 13)) * 10
    torch.testing.assert_close(
        value("rkd", {}, shifted, t), value("rkd", {}, s, t), rtol=1e-10, atol=0
    )


def test_keys_are_hyper_parameters():
    s, t = torch.tensor(draw((4, 3), 14)), torch.tensor(draw((4, 5), 15))
    keys = {"student": "features/s4", "teacher": "features/t4"}
    loss = build_loss("rkd", keys)
    assert loss.needs().student == ("features/s4",) and loss.needs().teacher == ("features/t4",)
    got = value("rkd", keys, s, t, keys=("features/s4", "features/t4"))
    torch.testing.assert_close(got, value("rkd", {}, s, t))


# --------------------------------------------------------------------------------------------
# torchdistill 1.1.5
# --------------------------------------------------------------------------------------------

TD = [
    ("rkd", {}, (6, 5), (6, 9), td_rkd),
    (
        "rkd",
        {"distance_weight": 1.0, "angle_weight": 2.0},
        (8, 2, 2, 2),
        (8, 7),
        lambda s, t: td_rkd(s, t, 1.0, 2.0),
    ),
    ("pkt", {}, (6, 5), (6, 9), td_pkt),
    ("pkt", {"eps": 1e-4}, (7, 3, 2, 2), (7, 5), lambda s, t: td_pkt(s, t, eps=1e-4)),
    ("cc", {}, (6, 5), (6, 9), td_cc),
    ("cc", {"gamma": 0.8, "order": 3}, (7, 3, 2, 2), (7, 5), lambda s, t: td_cc(s, t, 0.8, 3)),
    ("cc", {"normalize": False}, (6, 5), (6, 9), lambda s, t: td_cc(s, t, normalize=False)),
]


@pytest.mark.parametrize(("name", "params", "s_shape", "t_shape", "td"), TD)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torchdistill_value_and_gradient(name, params, s_shape, t_shape, td, dtype):
    s0 = torch.tensor(draw(s_shape, 20), dtype=dtype)
    t = torch.tensor(draw(t_shape, 21), dtype=dtype)
    if name == "cc" and not params.get("normalize", True):
        s0, t = s0 * 0.3, t * 0.3  # keep the raw dot products near the expansion's range
    s_ours, s_td = s0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
    ours, theirs = value(name, params, s_ours, t), td(s_td, t)
    ours.backward()
    theirs.backward()
    tol = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-14}
    torch.testing.assert_close(ours, theirs, **tol)
    torch.testing.assert_close(s_ours.grad, s_td.grad, **tol)


def test_torchdistill_spkd_normalizes_rows_by_l1_not_l2():
    """torchdistill's SPKDLoss is the paper's formula with L1 row norms; ours uses L2 (paper)."""
    s, t = draw((6, 5), 22), draw((6, 9), 23)
    theirs = td_sp(torch.tensor(s), torch.tensor(t)).item()
    np.testing.assert_allclose(theirs, ref_sp(s, t, row_norm=1), rtol=1e-12)
    ours = value("sp", {}, torch.tensor(s), torch.tensor(t)).item()
    np.testing.assert_allclose(ours, ref_sp(s, t, row_norm=2), rtol=1e-12)
    assert abs(ours - theirs) > 1e-3 * abs(ours)


def test_bench_cases_agree_at_small_size():
    cases = {c.loss: c for c in BENCH_CASES}
    for name in RELATION:
        case = cases[name]
        s, t, y = case.make(np.random.default_rng(0), False)
        s_t = {k: torch.tensor(v) for k, v in s.items()}
        t_t = {k: torch.tensor(v) for k, v in t.items()}
        loss = build_loss(name, case.params)
        ours = loss(Knowledge(s_t), Knowledge(t_t), y)
        np.testing.assert_allclose(ours.item(), case.reference(s, t, y, loss), rtol=1e-9)
        if case.torchdistill is not None:
            np.testing.assert_allclose(
                case.torchdistill(s_t, t_t, y).item(), ours.item(), rtol=1e-9
            )
        else:
            assert case.td_note


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RELATION)
@pytest.mark.parametrize(
    ("s_shape", "t_shape", "words"),
    [
        ((4, 2, 2, 2, 2), (4, 8), "rank"),
        ((4,), (4, 8), "rank"),
        ((4, 3), (5, 3), "batch sizes differ"),
    ],
)
def test_bad_shapes_name_both_keys_and_shapes(name, s_shape, t_shape, words):
    keys = ("features/s", "features/t")
    s, t = torch.zeros(s_shape), torch.zeros(t_shape)
    with pytest.raises(ShapeError) as info:
        value(name, {"student": keys[0], "teacher": keys[1]}, s, t, keys=keys)
    message = str(info.value)
    assert words in message
    for key, x in zip(keys, (s, t), strict=True):
        assert repr(key) in message and "(" + ", ".join(map(str, x.shape)) + ")" in message


def test_rkd_needs_two_samples():
    with pytest.raises(ShapeError, match=r"at least 2.*'embedding' \(1, 3\).*'embedding' \(1, 4\)"):
        value("rkd", {}, torch.zeros(1, 3), torch.zeros(1, 4))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("sp", {"gamma": 3000}),  # the paper's γ is the loss weight, not a parameter
        ("sp", {"student": 3}),
        ("rkd", {"distance_weight": -1.0}),
        ("rkd", {"angle_weight": float("inf")}),
        ("rkd", {"distance_weight": 0, "angle_weight": 0}),
        ("pkt", {"eps": 0.0}),
        ("pkt", {"eps": -1e-7}),
        ("cc", {"gamma": -0.4}),
        ("cc", {"gamma": 0}),
        ("cc", {"order": 0}),
        ("cc", {"order": 1.5}),
    ],
)
def test_bad_hyper_parameters_are_config_errors(name, params):
    with pytest.raises(ConfigError) as info:
        build_loss(name, params)
    assert name in str(info.value)


@pytest.mark.parametrize("name", RELATION)
def test_missing_key_is_a_knowledge_error(name):
    loss = build_loss(name)
    assert loss.needs().student == (EMBEDDING,) and loss.needs().teacher == (EMBEDDING,)
    x = torch.zeros(3, 4)
    with pytest.raises(KnowledgeError, match=r"'embedding'.*student"):
        loss(Knowledge({"logits": x}, source="student"), Knowledge({EMBEDDING: x}), None)
    with pytest.raises(KnowledgeError, match=r"'embedding'.*teacher"):
        loss(Knowledge({EMBEDDING: x}), Knowledge({}, source="teacher"), None)
