"""NumPy float64 references for the feature (fitnet, at) and relation (sp, rkd, pkt, cc) losses,
written from the papers' formulas one sample / pair / triplet at a time, and their bench cases.

Each reference computes the convention documented in the loss's docstring (means where the
authors' code averages), so the tests compare like with like; the torchdistill callables convert
torchdistill 1.1.5's value to that convention.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

# tests/losses is on sys.path under pytest (no __init__.py, rootdir-relative "prepend" import),
# and the benchmark puts it there too.
from bench_case import Arrays, BenchCase

# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def ref_fitnet(s: np.ndarray, t: np.ndarray) -> float:
    """``(1/n) Σ_e (s_e − t_e)²`` over all ``n`` elements, accumulated sample by sample."""
    total = 0.0
    for i in range(len(s)):
        total += float(np.sum((s[i] - t[i]) ** 2))
    return total / s.size


def _adaptive_avg_pool(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's adaptive average pooling of one ``(H, W)`` map: bin ``i`` covers rows
    ``floor(i·H/out)`` to ``ceil((i+1)·H/out)``."""
    h, w = a.shape
    out = np.empty((out_h, out_w))
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
        for j in range(out_w):
            c0, c1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            out[i, j] = a[r0:r1, c0:c1].mean()
    return out


def _at_energy(x: np.ndarray, p: float) -> np.ndarray:
    """One sample's ``mean_c |F_c|^p``: a ``(C, H, W)`` map gives ``(H, W)``, ``(N, D)`` tokens
    give ``(N,)``."""
    if x.ndim == 3:
        return np.mean(np.abs(x) ** p, axis=0)
    return np.mean(np.abs(x) ** p, axis=1)


def _as_grid(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return a
    side = math.isqrt(a.shape[0])
    return a.reshape(side, side)


def ref_at(
    s: np.ndarray, t: np.ndarray, p: float = 2.0, beta: float = 1000.0, resample: bool = False
) -> float:
    """``β/2 · mean_{b,j} (q^s_{b,j} − q^t_{b,j})²`` with ``q = Q / ‖Q‖``,
    ``Q = vec(mean_c |F_c|^p)``."""
    total, positions = 0.0, 0
    for i in range(len(s)):
        a_s, a_t = _at_energy(s[i], p), _at_energy(t[i], p)
        mismatch = a_s.size != a_t.size or (a_s.ndim == a_t.ndim == 2 and a_s.shape != a_t.shape)
        if resample and mismatch:
            g_s, g_t = _as_grid(a_s), _as_grid(a_t)
            h, w = min(g_s.shape[0], g_t.shape[0]), min(g_s.shape[1], g_t.shape[1])
            a_s, a_t = _adaptive_avg_pool(g_s, h, w), _adaptive_avg_pool(g_t, h, w)
        q_s = a_s.ravel() / np.linalg.norm(a_s)
        q_t = a_t.ravel() / np.linalg.norm(a_t)
        total += float(np.sum((q_s - q_t) ** 2))
        positions = q_s.size
    return beta / 2 * total / (len(s) * positions)


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float64)


def ref_sp(s: np.ndarray, t: np.ndarray, row_norm: int = 2) -> float:
    """``(1/B²) ‖G^t − G^s‖_F²``, ``G`` = ``Q Qᵀ`` with unit-norm rows (L2 as in the paper;
    ``row_norm=1`` is what torchdistill's SPKDLoss computes)."""
    q_s, q_t = _flat(s), _flat(t)
    b = len(q_s)

    def g(q: np.ndarray) -> np.ndarray:
        gram = np.array([[q[i] @ q[j] for j in range(b)] for i in range(b)])
        return np.array([row / np.linalg.norm(row, ord=row_norm) for row in gram])

    return float(np.sum((g(q_t) - g(q_s)) ** 2)) / b**2


def _huber(x: float) -> float:
    """Smooth-L1 with ``δ = 1``: ``½x²`` for ``|x| < 1``, ``|x| − ½`` otherwise."""
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _rkd_distance(q: np.ndarray) -> np.ndarray:
    b = len(q)
    d = np.array([[np.linalg.norm(q[i] - q[j]) for j in range(b)] for i in range(b)])
    mu = sum(d[i, j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
    return d / mu


def _rkd_angle(q: np.ndarray) -> np.ndarray:
    """``cos[i, j, k]`` of the angle at vertex ``x_i`` between ``x_j`` and ``x_k``."""
    b = len(q)
    cos = np.zeros((b, b, b))
    for i in range(b):
        e = q - q[i]
        norms = np.linalg.norm(e, axis=1)
        norms[i] = 1.0  # e[i] is the zero vector: no direction, cosine 0
        e = e / norms[:, None]
        cos[i] = e @ e.T
    return cos


def ref_rkd(
    s: np.ndarray, t: np.ndarray, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> float:
    """``w_D · mean_{i,j} l_δ(ψ_D^t, ψ_D^s) + w_A · mean_{i,j,k} l_δ(ψ_A^t, ψ_A^s)``."""
    q_s, q_t = _flat(s), _flat(t)
    d_s, d_t = _rkd_distance(q_s), _rkd_distance(q_t)
    a_s, a_t = _rkd_angle(q_s), _rkd_angle(q_t)
    dist = np.mean([_huber(x) for x in (d_s - d_t).ravel()])
    angle = np.mean([_huber(x) for x in (a_s - a_t).ravel()])
    return float(distance_weight * dist + angle_weight * angle)


def ref_pkt(s: np.ndarray, t: np.ndarray, eps: float = 1e-7) -> float:
    """``(1/B²) Σ_i Σ_j p^t_{j|i} log((p^t_{j|i} + ε) / (p^s_{j|i} + ε))`` with the cosine
    kernel ``K = (cos + 1)/2`` and ``p_{j|i} = K_ij / Σ_k K_ik`` (``k = i`` included)."""
    q_s, q_t = _flat(s), _flat(t)
    b = len(q_s)

    def cond(q: np.ndarray) -> np.ndarray:
        u = [q[i] / (np.linalg.norm(q[i]) + eps) for i in range(b)]
        k = np.array([[(u[i] @ u[j] + 1) / 2 for j in range(b)] for i in range(b)])
        return k / k.sum(axis=1, keepdims=True)

    p_s, p_t = cond(q_s), cond(q_t)
    total = 0.0
    for i in range(b):
        for j in range(b):
            total += p_t[i, j] * math.log((p_t[i, j] + eps) / (p_s[i, j] + eps))
    return total / b**2


def ref_cc(
    s: np.ndarray, t: np.ndarray, gamma: float = 0.4, order: int = 2, normalize: bool = True
) -> float:
    """``(1/B²) Σ_{i,j} (k^t_ij − k^s_ij)²``,
    ``k_ij = Σ_{p=0}^{P} e^{−2γ} (2γ)^p / p! (f_iᵀf_j)^p``."""
    q_s, q_t = _flat(s), _flat(t)
    b = len(q_s)

    def kernel(q: np.ndarray) -> np.ndarray:
        if normalize:
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
        k = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                dot = q[i] @ q[j]
                k[i, j] = sum(
                    math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot**p
                    for p in range(order + 1)
                )
        return k

    return float(np.sum((kernel(q_t) - kernel(q_s)) ** 2)) / b**2


# ---------------------------------------------------------------------------------------------
# torchdistill 1.1.5, converted to our conventions
# ---------------------------------------------------------------------------------------------


def _io(x: torch.Tensor, path: str) -> dict[str, dict[str, torch.Tensor]]:
    return {path: {"output": x}}


_BUILT: dict[str, torch.nn.Module] = {}


def _once(key: str, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Each torchdistill loss module is built once, so the benchmark times only its calls."""
    if key not in _BUILT:
        _BUILT[key] = build()
    return _BUILT[key]


def td_fitnet(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    from torchdistill.losses.mid_level import SimpleLossWrapper

    wrapper = _once(
        "fitnet",
        lambda: SimpleLossWrapper(
            torch.nn.MSELoss(reduction="mean"),
            input={"is_from_teacher": False, "module_path": "s", "io": "output"},
            target={"is_from_teacher": True, "module_path": "t", "io": "output"},
        ),
    )
    return wrapper(_io(s, "s"), _io(t, "t"), None)


def td_at(s: torch.Tensor, t: torch.Tensor, beta: float = 1000.0) -> torch.Tensor:
    from torchdistill.losses.mid_level import ATLoss

    pairs = {
        "p": {
            "student": {"io": "output", "path": "s"},
            "teacher": {"io": "output", "path": "t"},
            "weight": 1,
        }
    }
    loss = _once("at", lambda: ATLoss(pairs, mode="code"))
    return beta / 2 * loss(_io(s, "s"), _io(t, "t"))


def td_sp(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """torchdistill's SPKDLoss(batchmean): L1-normalized rows of G, *not* our (paper's) value."""
    from torchdistill.losses.mid_level import SPKDLoss

    loss = _once("sp", lambda: SPKDLoss("s", "t", reduction="batchmean"))
    return loss(_io(s, "s"), _io(t, "t"))


def td_rkd(
    s: torch.Tensor, t: torch.Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> torch.Tensor:
    from torchdistill.losses.mid_level import RKDLoss

    loss = _once(
        f"rkd {distance_weight} {angle_weight}",
        lambda: RKDLoss(
            "s", "t", dist_factor=distance_weight, angle_factor=angle_weight, reduction="mean"
        ),
    )
    return loss(_io(s, "s"), _io(t, "t"))


def td_pkt(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    from torchdistill.losses.mid_level import PKTLoss

    # PKTLoss reads (B, D) vectors; flatten as ours does.
    return _once(f"pkt {eps}", lambda: PKTLoss("s", "output", "t", "output", eps=eps))(
        _io(s.flatten(1), "s"), _io(t.flatten(1), "t")
    )


def td_cc(
    s: torch.Tensor, t: torch.Tensor, gamma: float = 0.4, order: int = 2, normalize: bool = True
) -> torch.Tensor:
    """torchdistill's ``CCKDLoss`` (gaussian, batchmean) returns ``‖K^t − K^s‖_F / B²`` of
    unnormalized inputs; ours is ``‖K^t − K^s‖_F² / B²`` (of normalized inputs by default):
    feed it what our kernel sees and return ``B² · value²``."""
    from torchdistill.losses.mid_level import CCKDLoss

    s, t = s.flatten(1), t.flatten(1)
    if normalize:
        s, t = torch.nn.functional.normalize(s, dim=1), torch.nn.functional.normalize(t, dim=1)
    config = {"type": "gaussian", "gamma": gamma, "max_p": order}
    loss = _once(f"cc {config}", lambda: CCKDLoss("s", "t", config, reduction="batchmean"))
    value = loss(_io(s, "s"), _io(t, "t"))
    return len(s) ** 2 * value**2


# ---------------------------------------------------------------------------------------------
# Bench cases
# ---------------------------------------------------------------------------------------------

S, T = "features/s", "features/t"
EMB = "embedding"


def _maps(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Post-ReLU-like feature maps (non-negative, about half exact zeros)."""
    return np.maximum(rng.standard_normal(shape), 0.0)


def _pair_maker(s_shape, t_shape, s_small, t_small, key_s, key_t, relu):
    def make(rng: np.random.Generator, realistic: bool) -> tuple[Arrays, Arrays, None]:
        ss, ts = (s_shape, t_shape) if realistic else (s_small, t_small)
        draw = (lambda shape: _maps(rng, shape)) if relu else rng.standard_normal
        return {key_s: draw(ss)}, {key_t: draw(ts)}, None

    return make


def _ref(fn, key_s: str, key_t: str, **kw):
    return lambda s, t, y, loss: fn(s[key_s], t[key_t], **kw)


def _td(fn, key_s: str, key_t: str, **kw):
    return lambda s, t, y: fn(s[key_s], t[key_t], **kw)


_KEYS = {"student": S, "teacher": T}

BENCH_CASES: list[BenchCase] = [
    BenchCase(
        loss="fitnet",
        params=dict(_KEYS),
        make=_pair_maker((64, 128, 8, 8), (64, 128, 8, 8), (4, 6, 4, 4), (4, 6, 4, 4), S, T, True),
        reference=_ref(ref_fitnet, S, T),
        torchdistill=_td(td_fitnet, S, T),
        td_note="SimpleLossWrapper(nn.MSELoss(reduction='mean')); equal",
    ),
    BenchCase(
        loss="at",
        params=dict(_KEYS),
        make=_pair_maker((64, 64, 8, 8), (64, 128, 8, 8), (4, 3, 4, 4), (4, 5, 4, 4), S, T, True),
        reference=_ref(ref_at, S, T),
        torchdistill=_td(td_at, S, T),
        td_note="ATLoss(mode='code') × β/2 (β = 1000)",
    ),
    BenchCase(
        loss="sp",
        params=dict(_KEYS),
        make=_pair_maker((64, 64, 8, 8), (64, 128, 8, 8), (6, 3, 2, 2), (6, 5, 2, 2), S, T, True),
        reference=_ref(ref_sp, S, T),
        torchdistill=None,
        td_note="not compared: torchdistill's SPKDLoss normalizes the rows of G by their L1 "
        "norm (normalize(G, 1) passes p=1), the paper by their L2 norm",
    ),
    BenchCase(
        loss="rkd",
        params={},
        make=_pair_maker((64, 256), (64, 512), (6, 5), (6, 7), EMB, EMB, False),
        reference=_ref(ref_rkd, EMB, EMB),
        torchdistill=_td(td_rkd, EMB, EMB),
        td_note="RKDLoss(dist_factor=25, angle_factor=50, reduction='mean'); equal",
    ),
    BenchCase(
        loss="pkt",
        params={},
        make=_pair_maker((64, 256), (64, 512), (6, 5), (6, 7), EMB, EMB, False),
        reference=_ref(ref_pkt, EMB, EMB),
        torchdistill=_td(td_pkt, EMB, EMB),
        td_note="PKTLoss(eps=1e-7); equal",
    ),
    BenchCase(
        loss="cc",
        params={},
        make=_pair_maker((64, 256), (64, 512), (6, 5), (6, 7), EMB, EMB, False),
        reference=_ref(ref_cc, EMB, EMB),
        torchdistill=_td(td_cc, EMB, EMB),
        td_note="B² · CCKDLoss(gaussian γ=0.4 max_p=2, batchmean)² on L2-normalized inputs",
    ),
]
