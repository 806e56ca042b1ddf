"""NumPy float64 references for the MiniLM attention losses (attention_kl, value_relation),
written from the papers' formulas one (sample, head, query) row at a time, and their bench cases.

torchdistill 1.1.5 has no MiniLM loss, so neither bench case has a torchdistill callable.
"""

from __future__ import annotations

import math

import numpy as np

# tests/losses is on sys.path under pytest (no __init__.py), and the benchmark puts it there too.
from bench_case import Arrays, BenchCase

# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """``KL(p ‖ q) = Σ_k p_k log(p_k / q_k)`` over the keys where ``p_k > 0`` (``0 log 0 = 0``)."""
    return float(sum(p[k] * math.log(p[k] / q[k]) for k in range(len(p)) if p[k] > 0))


def ref_attention_kl(s: np.ndarray, t: np.ndarray, head_reduce: str = "none") -> float:
    """MiniLM Eq. 7, averaged over the batch: ``1/(B·H·N) Σ_b Σ_a Σ_i KL(A^t_{b,a,i} ‖
    A^s_{b,a,i})`` on ``(B, H, N, N)`` probabilities; ``head_reduce="mean"`` first averages the
    heads of each side."""
    if head_reduce == "mean":
        s, t = s.mean(axis=1, keepdims=True), t.mean(axis=1, keepdims=True)
    b, h, n, _ = t.shape
    total = 0.0
    for i in range(b):
        for a in range(h):
            for q in range(n):
                total += kl(t[i, a, q], s[i, a, q])
    return total / (b * h * n)


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax of a vector, shifted by its max."""
    e = np.exp(z - z.max())
    return e / e.sum()


def _relation(v: np.ndarray, heads: int) -> np.ndarray:
    """One sample's ``VR_a = softmax(V_a V_aᵀ / √d)``, ``(heads, N, N)``, ``V_a`` the ``a``-th
    contiguous width-``d`` slice of ``(N, D)`` values."""
    n, dim = v.shape
    d = dim // heads
    out = np.empty((heads, n, n))
    for a in range(heads):
        va = v[:, a * d : (a + 1) * d]
        for i in range(n):
            out[a, i] = softmax(np.array([va[i] @ va[j] for j in range(n)]) / math.sqrt(d))
    return out


def ref_value_relation(s: np.ndarray, t: np.ndarray, relation_heads: int) -> float:
    """MiniLM Eq. 8-9 (MiniLMv2's relation heads): ``1/(B·R·N) Σ_b Σ_a Σ_i KL(VR^t_{b,a,i} ‖
    VR^s_{b,a,i})`` on ``(B, N, D)`` values (widths may differ)."""
    b, n, _ = t.shape
    total = 0.0
    for i in range(b):
        r_s, r_t = _relation(s[i], relation_heads), _relation(t[i], relation_heads)
        for a in range(relation_heads):
            for q in range(n):
                total += kl(r_t[a, q], r_s[a, q])
    return total / (b * relation_heads * n)


def random_attention(
    rng: np.random.Generator, shape: tuple[int, ...], scale: float = 2.0
) -> np.ndarray:
    """Softmax rows of random logits: attention-like probabilities, ``(..., N, N)``."""
    z = rng.standard_normal(shape) * scale
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Bench cases
# ---------------------------------------------------------------------------------------------

AS, AT = "attention/s", "attention/t"
VS, VT = "features/vs", "features/vt"


def _attention_maker(realistic_shape, small_shape):
    def make(rng: np.random.Generator, realistic: bool) -> tuple[Arrays, Arrays, None]:
        shape = realistic_shape if realistic else small_shape
        return {AS: random_attention(rng, shape)}, {AT: random_attention(rng, shape)}, None

    return make


def _value_maker(s_shape, t_shape, s_small, t_small):
    def make(rng: np.random.Generator, realistic: bool) -> tuple[Arrays, Arrays, None]:
        ss, ts = (s_shape, t_shape) if realistic else (s_small, t_small)
        return {VS: rng.standard_normal(ss)}, {VT: rng.standard_normal(ts)}, None

    return make


_NO_TD = "torchdistill 1.1.5 has no MiniLM loss"

BENCH_CASES: list[BenchCase] = [
    BenchCase(
        loss="attention_kl",
        params={"student": AS, "teacher": AT},
        # BERT-base-like: batch 32, 12 heads, 128 tokens
        make=_attention_maker((32, 12, 128, 128), (3, 2, 5, 5)),
        reference=lambda s, t, y, loss: ref_attention_kl(s[AS], t[AT]),
        torchdistill=None,
        td_note=_NO_TD,
        label="attention_kl-bert",
    ),
    BenchCase(
        loss="attention_kl",
        params={"student": AS, "teacher": AT},
        # the zoo ViT on 28×28 digits with 4×4 patches: batch 64, 4 heads, 1 + 49 tokens
        make=_attention_maker((64, 4, 50, 50), (3, 2, 5, 5)),
        reference=lambda s, t, y, loss: ref_attention_kl(s[AS], t[AT]),
        torchdistill=None,
        td_note=_NO_TD,
        label="attention_kl-vit",
    ),
    BenchCase(
        loss="value_relation",
        params={"student": VS, "teacher": VT, "relation_heads": 12},
        # BERT-base teacher (768) → 384-wide student, batch 32, 128 tokens, 12 relation heads
        make=_value_maker((32, 128, 384), (32, 128, 768), (3, 5, 12), (3, 5, 24)),
        reference=lambda s, t, y, loss: ref_value_relation(s[VS], t[VT], loss.relation_heads),
        torchdistill=None,
        td_note=_NO_TD,
        label="value_relation-bert",
    ),
]
