"""The MiniLM attention losses (attention_kl, value_relation), checked against NumPy float64
derivations of the papers' formulas (``ref_attention.py``), by gradcheck, by invariants, on
masked (exactly zero) probabilities and on bad inputs; and an end-to-end ViT → ViT run.
torchdistill has no MiniLM loss to compare with."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from ref_attention import (
    BENCH_CASES,
    random_attention,
    ref_attention_kl,
    ref_value_relation,
)

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ConfigError, KnowledgeError, ShapeError
from crossdistill.losses import build_loss

AS, AT = "attention/s", "attention/t"
VS, VT = "features/vs", "features/vt"
A_KEYS = {"student": AS, "teacher": AT}
V_KEYS = {"student": VS, "teacher": VT}


def attention_kl(s: torch.Tensor, t: torch.Tensor, **params: Any) -> torch.Tensor:
    loss = build_loss("attention_kl", {**A_KEYS, **params})
    return loss(Knowledge({AS: s}, source="student"), Knowledge({AT: t}, source="teacher"), None)


def value_relation(s: torch.Tensor, t: torch.Tensor, heads: int, **params: Any) -> torch.Tensor:
    loss = build_loss("value_relation", {**V_KEYS, "relation_heads": heads, **params})
    return loss(Knowledge({VS: s}, source="student"), Knowledge({VT: t}, source="teacher"), None)


def probs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return random_attention(np.random.default_rng(seed), shape)


def draw(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def check_both_dtypes(got: Any, expected: float) -> None:
    got64 = got(torch.float64)
    assert got64.dtype == torch.float64 and got64.dim() == 0
    np.testing.assert_allclose(got64.item(), expected, rtol=1e-9, atol=1e-15)
    got32 = got(torch.float32)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.item(), expected, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Against the NumPy references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "params"),
    [
        ((2, 3, 5, 5), (2, 3, 5, 5), {}),
        ((1, 1, 7, 7), (1, 1, 7, 7), {}),
        ((3, 2, 4, 4), (3, 4, 4, 4), {"head_reduce": "mean"}),
        ((2, 3, 5, 5), (2, 3, 5, 5), {"head_reduce": "mean"}),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_attention_kl_matches_numpy_reference(s_shape, t_shape, params, seed):
    s, t = probs(s_shape, seed), probs(t_shape, seed + 100)
    expected = ref_attention_kl(s, t, **params)
    check_both_dtypes(
        lambda dt: attention_kl(torch.tensor(s, dtype=dt), torch.tensor(t, dtype=dt), **params),
        expected,
    )


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "heads"),
    [
        ((2, 5, 6), (2, 5, 6), 1),
        ((2, 5, 6), (2, 5, 12), 3),  # widths differ: d_s = 2, d_t = 4
        ((3, 4, 8), (3, 4, 4), 4),  # MiniLMv2: as many relation heads as the width allows
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_value_relation_matches_numpy_reference(s_shape, t_shape, heads, seed):
    s, t = draw(s_shape, seed), draw(t_shape, seed + 100)
    expected = ref_value_relation(s, t, heads)
    check_both_dtypes(
        lambda dt: value_relation(torch.tensor(s, dtype=dt), torch.tensor(t, dtype=dt), heads),
        expected,
    )


def test_bench_cases_agree_at_small_size():
    for case in BENCH_CASES:
        s, t, y = case.make(np.random.default_rng(0), False)
        loss = build_loss(case.loss, case.params)
        ours = loss(
            Knowledge({k: torch.tensor(v) for k, v in s.items()}),
            Knowledge({k: torch.tensor(v) for k, v in t.items()}),
            y,
        )
        np.testing.assert_allclose(ours.item(), case.reference(s, t, y, loss), rtol=1e-9)
        assert case.torchdistill is None and "no MiniLM" in case.td_note


# --------------------------------------------------------------------------------------------
# Gradients and invariants
# --------------------------------------------------------------------------------------------


def test_attention_kl_gradcheck():
    t = torch.tensor(probs((2, 2, 4, 4), 3))
    s = torch.tensor(probs((2, 2, 4, 4), 4), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: attention_kl(x, t), (s,))
    t3 = torch.tensor(probs((2, 3, 4, 4), 5))
    assert torch.autograd.gradcheck(lambda x: attention_kl(x, t3, head_reduce="mean"), (s,))


def test_value_relation_gradcheck():
    t = torch.tensor(draw((2, 4, 6), 3))
    s = torch.tensor(draw((2, 4, 4), 4), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: value_relation(x, t, 2), (s,))


def test_attention_kl_zero_with_zero_gradient_through_the_softmax_at_equality():
    """At ``A^s = A^t`` the gradient in the probabilities is the constant ``−1/(B·H·N)`` on
    each row (orthogonal to the simplex); through the softmax that made them it is 0."""
    z_t = torch.tensor(draw((2, 3, 5, 5), 6))
    z = z_t.clone().requires_grad_(True)
    p = torch.softmax(z, dim=-1)
    p.retain_grad()
    loss = attention_kl(p, torch.softmax(z_t, dim=-1))
    loss.backward()
    assert abs(loss.item()) < 1e-15
    assert z.grad.abs().max().item() < 1e-15
    torch.testing.assert_close(p.grad, torch.full_like(p, -1 / (2 * 3 * 5)))


def test_value_relation_zero_with_zero_gradient_at_equality():
    t = torch.tensor(draw((3, 5, 8), 7))
    s = t.clone().requires_grad_(True)
    loss = value_relation(s, t, 2)
    loss.backward()
    assert abs(loss.item()) < 1e-15
    assert s.grad.abs().max().item() < 1e-15


def test_value_relation_invariant_to_rotations_within_heads_only():
    """The loss reads ``V_a V_aᵀ`` per head: rotating each head's slice of the values keeps it;
    a rotation mixing the heads does not."""
    s, t = torch.tensor(draw((2, 5, 6), 8)), torch.tensor(draw((2, 5, 9), 9))
    base = value_relation(s, t, 3)
    rotations = [torch.linalg.qr(torch.tensor(draw((2, 2), 10 + a)))[0] for a in range(3)]
    within = torch.cat([s[..., 2 * a : 2 * a + 2] @ r for a, r in enumerate(rotations)], dim=-1)
    torch.testing.assert_close(value_relation(within, t, 3), base, rtol=1e-12, atol=0)
    mixing = s @ torch.linalg.qr(torch.tensor(draw((6, 6), 20)))[0]
    assert abs(value_relation(mixing, t, 3).item() - base.item()) > 1e-3


def test_attention_kl_masked_keys_give_finite_values_and_gradients():
    """Padding keys masked to exactly 0 on both sides: 0·log 0 = 0, no NaN in the gradient;
    the value equals the KL over the real keys only."""
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[0, ..., 4:] = False  # sample 0 has 4 real tokens of 6
    z_s, z_t = torch.tensor(draw((2, 2, 6, 6), 11)), torch.tensor(draw((2, 2, 6, 6), 12))
    masked = torch.finfo(torch.float64).min
    t = torch.softmax(z_t.masked_fill(~mask, masked), dim=-1)
    z = z_s.clone().requires_grad_(True)
    s = torch.softmax(z.masked_fill(~mask, masked), dim=-1)
    assert (t[0, ..., 4:] == 0).all() and (s[0, ..., 4:] == 0).all()
    loss = attention_kl(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert (z.grad[0, ..., 4:] == 0).all()
    np.testing.assert_allclose(
        loss.item(), ref_attention_kl(s.detach().numpy(), t.numpy()), rtol=1e-12
    )
    # the same holds for exact zeros given directly as probabilities
    s_leaf = s.detach().clone().requires_grad_(True)
    attention_kl(s_leaf, t).backward()
    assert torch.isfinite(s_leaf.grad).all() and (s_leaf.grad[0, ..., 4:] == 0).all()


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


def assert_names_both(message: str, keys: tuple[str, str], tensors: tuple[torch.Tensor, ...]):
    for key, x in zip(keys, tensors, strict=True):
        assert repr(key) in message and "(" + ", ".join(map(str, x.shape)) + ")" in message


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "words"),
    [
        ((2, 4, 5), (2, 4, 5, 5), "rank"),  # a (B, L, D) Linear output tapped as attention
        ((2, 4, 5, 5), (3, 4, 5, 5), "batch sizes differ"),
        ((2, 4, 5, 5), (2, 4, 6, 6), "sequence lengths differ"),
        ((2, 2, 5, 5), (2, 4, 5, 5), "head counts differ"),
        ((2, 4, 5, 3), (2, 4, 5, 3), "(B, heads, N, N)"),
    ],
)
def test_attention_kl_bad_shapes_name_both_keys_and_shapes(s_shape, t_shape, words):
    s, t = torch.full(s_shape, 0.2), torch.full(t_shape, 0.2)
    with pytest.raises(ShapeError) as info:
        attention_kl(s, t)
    assert words in str(info.value)
    assert_names_both(str(info.value), (AS, AT), (s, t))


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "heads", "words"),
    [
        ((2, 4, 6, 1), (2, 4, 6), 2, "rank"),
        ((2, 4, 6), (3, 4, 6), 2, "batch sizes differ"),
        ((2, 4, 6), (2, 5, 6), 2, "sequence lengths differ"),
        ((2, 4, 6), (2, 4, 9), 2, "teacher width 9"),
    ],
)
def test_value_relation_bad_shapes_name_both_keys_and_shapes(s_shape, t_shape, heads, words):
    s, t = torch.zeros(s_shape), torch.zeros(t_shape)
    with pytest.raises(ShapeError) as info:
        value_relation(s, t, heads)
    assert words in str(info.value)
    assert_names_both(str(info.value), (VS, VT), (s, t))


@pytest.mark.parametrize(
    ("side", "bad", "words"),
    [
        ("student", lambda p: p * 3 - 0.1, "negative"),  # attention logits, not probabilities
        ("teacher", lambda p: p * 1.1, "rows summing to 1 ± 0.1"),
        ("student", lambda p: p.transpose(-2, -1), "rows summing"),  # softmax over queries
    ],
)
def test_attention_kl_refuses_non_distributions_naming_the_key(side, bad, words):
    p = torch.tensor(probs((2, 2, 5, 5), 13))
    s, t = (bad(p), p) if side == "student" else (p, bad(p))
    with pytest.raises(ShapeError, match=words) as info:
        attention_kl(s, t)
    assert f"{side} {AS if side == 'student' else AT!r}" in str(info.value)


def test_attention_kl_checks_distributions_once_per_mode():
    """The check costs a host sync: it runs on the first eval call (the preflight) and on the
    first training call (where attention dropout would show), not on every step."""
    loss = build_loss("attention_kl", A_KEYS)
    p = torch.tensor(probs((2, 2, 5, 5), 14))
    good, dropped = Knowledge({AS: p}), Knowledge({AS: torch.nn.functional.dropout(p, 0.5)})
    loss.eval()
    loss(good, Knowledge({AT: p}), None)
    loss(dropped, Knowledge({AT: p}), None)  # eval already checked: not looked at again
    loss.train()
    with pytest.raises(ShapeError, match="dropout"):
        loss(dropped, Knowledge({AT: p}), None)
    loss(good, Knowledge({AT: p}), None)
    loss(dropped, Knowledge({AT: p}), None)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("attention_kl", {"head_reduce": "sum"}),
        ("attention_kl", {"temperature": 2.0}),
        ("attention_kl", {"student": 3}),
        ("value_relation", {}),  # relation_heads is required: no default fits every model
        ("value_relation", {"relation_heads": 0}),
        ("value_relation", {"relation_heads": 1.5}),
        ("value_relation", {"relation_heads": 2, "student_heads": 2}),
    ],
)
def test_bad_hyper_parameters_are_config_errors(name, params):
    with pytest.raises(ConfigError) as info:
        build_loss(name, params)
    assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "params", "x"),
    [
        ("attention_kl", A_KEYS, torch.full((2, 1, 3, 3), 1 / 3)),
        ("value_relation", {**V_KEYS, "relation_heads": 1}, torch.zeros(2, 3, 4)),
    ],
)
def test_missing_key_is_a_knowledge_error(name, params, x):
    loss = build_loss(name, params)
    s_key, t_key = params["student"], params["teacher"]
    assert loss.needs().student == (s_key,) and loss.needs().teacher == (t_key,)
    with pytest.raises(KnowledgeError, match=rf"{s_key!r}.*student"):
        loss(Knowledge({"logits": x}, source="student"), Knowledge({t_key: x}), None)
    with pytest.raises(KnowledgeError, match=rf"{t_key!r}.*teacher"):
        loss(Knowledge({s_key: x}), Knowledge({}, source="teacher"), None)
