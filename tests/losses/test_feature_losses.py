"""The feature losses (fitnet, at), checked against NumPy float64 derivations of the papers'
formulas (``ref_feature.py``), against torchdistill 1.1.5, by gradcheck, by invariants and on bad
inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from ref_feature import BENCH_CASES, ref_at, ref_fitnet, td_at, td_fitnet

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ConfigError, KnowledgeError, ShapeError
from crossdistill.losses import build_loss

S, T = "features/s3", "features/t3"
KEYS = {"student": S, "teacher": T}


def value(name: str, params: dict[str, Any], s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    loss = build_loss(name, {**KEYS, **params})
    return loss(Knowledge({S: s}, source="student"), Knowledge({T: t}, source="teacher"), None)


def draw(shape: tuple[int, ...], seed: int, relu: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.maximum(x, 0.0) if relu else x


# (loss, params, student shape, teacher shape, numpy reference)
CASES = [
    ("fitnet", {}, (3, 5), (3, 5), ref_fitnet),
    ("fitnet", {}, (2, 4, 3, 3), (2, 4, 3, 3), ref_fitnet),
    ("fitnet", {}, (4, 6, 7), (4, 6, 7), ref_fitnet),
    ("at", {}, (3, 4, 5, 5), (3, 6, 5, 5), ref_at),
    ("at", {"p": 1.0}, (2, 3, 4, 6), (2, 5, 4, 6), lambda s, t: ref_at(s, t, p=1.0)),
    (
        "at",
        {"p": 3.0, "beta": 2.0},
        (2, 3, 4, 4),
        (2, 2, 4, 4),
        lambda s, t: ref_at(s, t, 3.0, 2.0),
    ),
    ("at", {}, (2, 9, 4), (2, 3, 3, 3), ref_at),  # ViT tokens vs a CNN map
    ("at", {}, (2, 6, 5), (2, 6, 8), ref_at),  # tokens vs tokens, different widths
    (
        "at",
        {"resample": True},
        (2, 3, 8, 6),
        (2, 4, 4, 3),
        lambda s, t: ref_at(s, t, resample=True),
    ),
    (
        "at",
        {"resample": True},
        (2, 16, 3),
        (2, 5, 3, 3),
        lambda s, t: ref_at(s, t, resample=True),
    ),
]
IDS = [f"{c[0]}-{c[2]}-{c[3]}-{c[1]}" for c in CASES]


@pytest.mark.parametrize(("name", "params", "s_shape", "t_shape", "ref"), CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_reference(name, params, s_shape, t_shape, ref, seed):
    s, t = draw(s_shape, seed, relu=True), draw(t_shape, seed + 100, relu=True)
    expected = ref(s, t)
    got64 = value(name, params, torch.tensor(s), torch.tensor(t))
    assert got64.dtype == torch.float64 and got64.dim() == 0
    np.testing.assert_allclose(got64.item(), expected, rtol=1e-9, atol=0)
    got32 = value(name, params, torch.tensor(s, dtype=torch.float32), torch.tensor(t).float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.item(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("name", "params", "s_shape", "t_shape", "ref"), CASES, ids=IDS)
def test_gradcheck(name, params, s_shape, t_shape, ref):
    # Gaussian inputs (no exact zeros) so finite differences never straddle a kink of |x|.
    s = torch.tensor(draw(s_shape, 3), requires_grad=True)
    t = torch.tensor(draw(t_shape, 4))
    assert torch.autograd.gradcheck(lambda x: value(name, params, x, t), (s,))


@pytest.mark.parametrize(
    ("name", "params", "shape"),
    [("fitnet", {}, (3, 4, 2, 2)), ("at", {}, (3, 4, 5, 5)), ("at", {"p": 1.0}, (2, 6, 4))],
)
def test_zero_with_zero_gradient_when_student_equals_teacher(name, params, shape):
    t = torch.tensor(draw(shape, 5, relu=True))
    s = t.clone().requires_grad_(True)
    loss = value(name, params, s, t)
    loss.backward()
    assert loss.item() == 0.0
    assert s.grad.abs().max().item() < 1e-12


def test_at_invariances():
    """The attention map is a channel mean normalized per sample: rescaling a sample, permuting
    or repeating its channels leaves the loss unchanged; so does comparing tokens (B, HW, C)
    with the same map (B, C, H, W)."""
    s, t = torch.tensor(draw((3, 4, 5, 5), 6)), torch.tensor(draw((3, 7, 5, 5), 7))
    base = value("at", {}, s, t)
    scale = torch.tensor([0.5, 3.0, 20.0], dtype=torch.float64).view(3, 1, 1, 1)
    torch.testing.assert_close(value("at", {}, s * scale, t), base, rtol=1e-12, atol=0)
    torch.testing.assert_close(value("at", {}, s[:, [2, 0, 3, 1]], t), base, rtol=1e-12, atol=0)
    torch.testing.assert_close(value("at", {}, s.repeat(1, 3, 1, 1), t), base, rtol=1e-12, atol=0)
    tokens = s.flatten(2).transpose(1, 2)  # (B, H·W, C), row-major positions
    torch.testing.assert_close(value("at", {}, tokens, t), base, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        value("at", {"beta": 10.0}, s, t), base * 10 / 1000, rtol=1e-12, atol=0
    )


def test_fitnet_is_mean_squared_error_and_scales_quadratically():
    s, t = torch.tensor(draw((4, 3, 2, 2), 8)), torch.tensor(draw((4, 3, 2, 2), 9))
    torch.testing.assert_close(value("fitnet", {}, s, t), torch.nn.functional.mse_loss(s, t))
    torch.testing.assert_close(value("fitnet", {}, 3 * s, 3 * t), 9 * value("fitnet", {}, s, t))


# --------------------------------------------------------------------------------------------
# torchdistill 1.1.5
# --------------------------------------------------------------------------------------------

TD = [
    ("fitnet", (4, 6, 3, 3), (4, 6, 3, 3), td_fitnet),
    ("fitnet", (5, 7), (5, 7), td_fitnet),
    ("at", (4, 6, 5, 5), (4, 9, 5, 5), td_at),
    ("at", (3, 2, 8, 8), (3, 3, 8, 8), td_at),
]


@pytest.mark.parametrize(("name", "s_shape", "t_shape", "td"), TD)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torchdistill_value_and_gradient(name, s_shape, t_shape, td, dtype):
    s0 = torch.tensor(draw(s_shape, 10, relu=True), dtype=dtype)
    t = torch.tensor(draw(t_shape, 11, relu=True), dtype=dtype)
    s_ours, s_td = s0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
    ours, theirs = value(name, {}, s_ours, t), td(s_td, t)
    ours.backward()
    theirs.backward()
    tol = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
    torch.testing.assert_close(ours, theirs, **tol)
    torch.testing.assert_close(s_ours.grad, s_td.grad, **tol)


def test_bench_cases_cover_both_losses_and_agree_at_small_size():
    cases = {c.loss: c for c in BENCH_CASES}
    for name in ("fitnet", "at"):
        case = cases[name]
        s, t, y = case.make(np.random.default_rng(0), False)
        loss = build_loss(name, case.params)
        ours = loss(
            Knowledge({k: torch.tensor(v) for k, v in s.items()}),
            Knowledge({k: torch.tensor(v) for k, v in t.items()}),
            y,
        )
        np.testing.assert_allclose(ours.item(), case.reference(s, t, y, loss), rtol=1e-9)
        td = case.torchdistill(
            {k: torch.tensor(v) for k, v in s.items()},
            {k: torch.tensor(v) for k, v in t.items()},
            None,
        )
        np.testing.assert_allclose(td.item(), ours.item(), rtol=1e-9)


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


def assert_names_both(message: str, s: torch.Tensor, t: torch.Tensor) -> None:
    for key, x in ((S, s), (T, t)):
        assert repr(key) in message
        assert "(" + ", ".join(map(str, x.shape)) + ")" in message


@pytest.mark.parametrize(
    ("name", "params", "s_shape", "t_shape", "words"),
    [
        ("fitnet", {}, (2, 4, 3, 3), (2, 8, 3, 3), "shapes differ"),
        ("fitnet", {}, (2, 4, 3, 3, 1), (2, 4, 3, 3, 1), "rank"),
        ("fitnet", {}, (3, 5), (2, 5), "batch sizes differ"),
        ("at", {}, (2, 4, 8, 8), (2, 4, 4, 4), "spatial sizes differ"),
        ("at", {}, (2, 4, 8, 4), (2, 4, 4, 8), "spatial sizes differ"),
        ("at", {}, (2, 10, 4), (2, 4, 3, 3), "spatial sizes differ"),
        ("at", {}, (2, 16), (2, 16), "rank"),
        ("at", {"resample": True}, (2, 10, 4), (2, 4, 2, 2), "not a square"),
    ],
)
def test_bad_shapes_name_both_keys_and_shapes(name, params, s_shape, t_shape, words):
    s, t = torch.zeros(s_shape), torch.zeros(t_shape)
    with pytest.raises(ShapeError) as info:
        value(name, params, s, t)
    assert words in str(info.value)
    assert_names_both(str(info.value), s, t)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fitnet", {"student": S}),  # teacher key missing
        ("fitnet", {"student": S, "teacher": T, "p": 2}),  # unknown hyper-parameter
        ("at", {"student": S}),
        ("at", {**KEYS, "p": -2.0}),
        ("at", {**KEYS, "p": 0.0}),
        ("at", {**KEYS, "p": 0.5}),
        ("at", {**KEYS, "p": float("nan")}),
        ("at", {**KEYS, "beta": -1.0}),
        ("at", {**KEYS, "p": "two"}),
    ],
)
def test_bad_hyper_parameters_are_config_errors(name, params):
    with pytest.raises(ConfigError) as info:
        build_loss(name, params)
    assert name in str(info.value)


@pytest.mark.parametrize("name", ["fitnet", "at"])
def test_missing_key_is_a_knowledge_error(name):
    loss = build_loss(name, KEYS)
    assert loss.needs().student == (S,) and loss.needs().teacher == (T,)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(KnowledgeError, match="features/s3"):
        loss(Knowledge({"features/other": x}, source="student"), Knowledge({T: x}), None)
    with pytest.raises(KnowledgeError, match="features/t3"):
        loss(Knowledge({S: x}), Knowledge({"logits": x}, source="teacher"), None)
