"""NumPy float64 references for the contrastive / affinity / ND / OFA losses, written from the
papers' formulas one sample (one row) at a time, and their benchmark cases.

Stateful losses (``crd``'s heads and queues, ``nd``'s class means, ``ofa``'s projector) are read
from the built loss. A lazily sized head is materialized here if the loss has not run yet (by
calling the head itself on zeros, never the loss), so that reading it before or after the
measured call gives the same numbers.

torchdistill 1.1.5 has none of these four: its ``CRDLoss`` is CRD's NCE on a dataset-sized memory
bank (ours is InfoNCE on a queue) and its ``AffinityLoss`` is KTA's spatial affinity, a different
loss; so every case has ``torchdistill=None``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from bench_case import BenchCase

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def np64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.sqrt(np.sum(v * v))


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max()
    return z - m - np.log(np.sum(np.exp(z - m)))


def kl(log_p: np.ndarray, log_q: np.ndarray) -> float:
    return float(np.sum(np.exp(log_p) * (log_p - log_q)))


def materialize(module: torch.nn.Module, width: int) -> None:
    """Size a lazy layer by calling it (not the loss) on zeros, if it has not been sized yet."""
    weight = module.weight
    if isinstance(weight, torch.nn.parameter.UninitializedParameter):
        with torch.no_grad():
            module(torch.zeros(1, width, dtype=weight.dtype))


# --------------------------------------------------------------------------------------------
# crd (InfoNCE with a queue; Tian et al. 2020 + He et al. 2020)
# --------------------------------------------------------------------------------------------


def ref_crd(s: np.ndarray, t: np.ndarray, loss) -> float:
    """``L_s + L_t`` from the docstring's formula, single process; reads heads and queues."""
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    materialize(loss.student_head, s.shape[1])
    materialize(loss.teacher_head, t.shape[1])
    w_s, b_s = np64(loss.student_head.weight), np64(loss.student_head.bias)
    w_t, b_t = np64(loss.teacher_head.weight), np64(loss.teacher_head.bias)
    n = int(loss.queue_len)
    q_s, q_t = np64(loss.student_queue)[:n], np64(loss.teacher_queue)[:n]
    tau = loss.temperature
    u = [unit(w_s @ x + b_s) for x in s]
    v = [unit(w_t @ x + b_t) for x in t]

    def direction(anchors, positives, queue) -> float:
        total = 0.0
        for i, a in enumerate(anchors):
            pos = a @ positives[i] / tau
            if loss.batch_negatives:
                cands = [a @ p / tau for p in positives] + [a @ k / tau for k in queue]
            else:
                cands = [pos] + [a @ k / tau for k in queue]
            cands = np.array(cands)
            m = cands.max()
            total += -(pos - m - np.log(np.sum(np.exp(cands - m))))
        return total / len(anchors)

    return direction(u, v, q_t) + direction(v, u, q_s)


# --------------------------------------------------------------------------------------------
# affinity (TinyCLIP, Wu et al. 2023)
# --------------------------------------------------------------------------------------------


def ref_affinity(
    s: np.ndarray,
    t: np.ndarray,
    s_other: np.ndarray | None = None,
    t_other: np.ndarray | None = None,
    temperature: float = 0.07,
    self_pairs: bool = False,
) -> float:
    s = [unit(r) for r in s.reshape(len(s), -1)]
    t = [unit(r) for r in t.reshape(len(t), -1)]
    b = len(s)

    def rows_kl(sa, sb, ta, tb, skip_self: bool) -> float:
        total, count = 0.0, 0
        for i in range(b):
            js = [j for j in range(b) if not (skip_self and j == i)]
            if not js:
                continue
            a_s = np.array([sa[i] @ sb[j] for j in js]) / temperature
            a_t = np.array([ta[i] @ tb[j] for j in js]) / temperature
            total += kl(log_softmax(a_t), log_softmax(a_s))
            count += 1
        return total / count if count else 0.0

    if s_other is None:
        return rows_kl(s, s, t, t, not self_pairs)
    so = [unit(r) for r in s_other.reshape(b, -1)]
    to = [unit(r) for r in t_other.reshape(b, -1)]
    return rows_kl(s, so, t, to, False) + rows_kl(so, s, to, t, False)


# --------------------------------------------------------------------------------------------
# nd (Wang et al. 2023, Eq. of the ND loss)
# --------------------------------------------------------------------------------------------


def ref_nd(s: np.ndarray, t: np.ndarray, y: np.ndarray, means: np.ndarray, counts) -> float:
    """``mean_i [1 - <s_i, c_y/|c_y|> / max(|s_i|, |t_i|)]`` over samples whose class has a mean."""
    terms = []
    for si, ti, yi in zip(s, t, y, strict=True):
        if counts[yi] <= 0:
            continue
        e = unit(means[yi])
        terms.append(1 - si @ e / max(np.linalg.norm(si), np.linalg.norm(ti)))
    return float(np.mean(terms)) if terms else 0.0


def ref_nd_from_loss(s, t, y, loss) -> float:
    return ref_nd(s, t, y, np64(loss.class_means), np64(loss.class_counts))


# --------------------------------------------------------------------------------------------
# ofa (Hao et al. 2023, Eq. 5) and its projector branch
# --------------------------------------------------------------------------------------------


def ref_ofa_criterion(z_s: np.ndarray, z_t: np.ndarray, y, eps: float, temperature: float) -> float:
    total = 0.0
    for zs, zt, yi in zip(z_s, z_t, y, strict=True):
        log_ps = log_softmax(zs / temperature)
        pt = np.exp(log_softmax(zt / temperature))
        term = -((1 + pt[yi]) ** eps) * log_ps[yi]
        term -= sum(pt[c] * log_ps[c] for c in range(len(pt)) if c != yi)
        total += term
    return total / len(z_s)


_erf = np.vectorize(math.erf)


def ref_projector(x: np.ndarray, loss) -> np.ndarray:
    """The branch logits: tokens → Linear → GELU (erf) → mean → LayerNorm → Linear."""
    if x.ndim == 4:
        x = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)
    elif x.ndim == 2:
        x = x[:, None, :]
    p = loss.projector
    materialize(p.linear, x.shape[2])
    w, b = np64(p.linear.weight), np64(p.linear.bias)
    h = x @ w.T + b
    h = 0.5 * h * (1 + _erf(h / math.sqrt(2)))
    h = h.mean(axis=1)
    mu, var = h.mean(axis=1, keepdims=True), h.var(axis=1, keepdims=True)
    h = (h - mu) / np.sqrt(var + p.norm.eps) * np64(p.norm.weight) + np64(p.norm.bias)
    return h @ np64(loss.head_weight).T + np64(loss.head_bias)


def materialize_ofa(loss, x: np.ndarray, z_t: np.ndarray) -> None:
    if loss.has_uninitialized_params():
        dtype = loss.projector.norm.weight.dtype
        with torch.no_grad():
            loss.projector(torch.zeros((1, *x.shape[1:]), dtype=dtype))
            loss.initialize_parameters({}, {"logits": torch.zeros(1, z_t.shape[1])})


def ref_ofa(x: np.ndarray, z_t: np.ndarray, y: np.ndarray, loss) -> float:
    materialize_ofa(loss, x, z_t)
    z_s = ref_projector(x, loss)
    return ref_ofa_criterion(z_s, z_t, y, loss.eps, loss.temperature)


# --------------------------------------------------------------------------------------------
# benchmark cases
# --------------------------------------------------------------------------------------------

ND_DIM, ND_CLASSES = 512, 100


def _make_pair(s_dim: int, t_dim: int, small: tuple[int, int, int]):
    def make(rng: np.random.Generator, realistic: bool):
        b, ds, dt = (128, s_dim, t_dim) if realistic else small
        return (
            {"embedding": rng.standard_normal((b, ds))},
            {"embedding": rng.standard_normal((b, dt))},
            None,
        )

    return make


def _prime_crd(loss, rng: np.random.Generator) -> None:
    """A full queue of unit vectors; eval mode so that the measured call leaves it as it is."""
    with torch.no_grad():
        for q in (loss.student_queue, loss.teacher_queue):
            q.copy_(torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal(q.shape))))
        loss.queue_len.fill_(loss.student_queue.shape[0])
        loss.queue_ptr.zero_()
    loss.eval()


def _make_affinity_cross(rng: np.random.Generator, realistic: bool):
    b, ds, dt = (128, 256, 512) if realistic else (6, 8, 12)
    return (
        {"embedding": rng.standard_normal((b, ds)), "text": rng.standard_normal((b, ds))},
        {"embedding": rng.standard_normal((b, dt)), "text": rng.standard_normal((b, dt))},
        None,
    )


def _make_nd(rng: np.random.Generator, realistic: bool):
    b = 128 if realistic else 8
    return (
        {"embedding": rng.standard_normal((b, ND_DIM))},
        {"embedding": rng.standard_normal((b, ND_DIM))},
        rng.integers(0, ND_CLASSES, b),
    )


def _prime_nd(loss, rng: np.random.Generator) -> None:
    """Precomputed (frozen) class means, the paper's setting."""
    loss.set_class_means(torch.from_numpy(rng.standard_normal((ND_CLASSES, ND_DIM))).float())


def _make_ofa(rng: np.random.Generator, realistic: bool):
    # a ResNet-18 layer3 map (B, 256, 14, 14) against ImageNet-100-like logits
    b, c, hw, k = (64, 256, 14, 100) if realistic else (4, 8, 3, 5)
    return (
        {"features/layer3": rng.standard_normal((b, c, hw, hw))},
        {"logits": 3 * rng.standard_normal((b, k))},
        rng.integers(0, k, b),
    )


def _make_ofa_tokens(rng: np.random.Generator, realistic: bool):
    # ViT-S tokens (B, 197, 384)
    b, n, d, k = (64, 197, 384, 100) if realistic else (4, 5, 6, 5)
    return (
        {"features/block6": rng.standard_normal((b, n, d))},
        {"logits": 3 * rng.standard_normal((b, k))},
        rng.integers(0, k, b),
    )


BENCH_CASES: list[BenchCase] = [
    BenchCase(
        loss="crd",
        params={"dim": 128, "queue_size": 4096, "temperature": 0.07},
        make=_make_pair(256, 512, (6, 10, 14)),
        reference=lambda s, t, y, loss: ref_crd(s["embedding"], t["embedding"], loss),
        prime=_prime_crd,
        td_note="torchdistill's CRDLoss is CRD's NCE on a memory bank: not comparable",
    ),
    BenchCase(
        loss="crd",
        params={"dim": 128, "queue_size": 4096, "batch_negatives": False},
        make=_make_pair(256, 512, (6, 10, 14)),
        reference=lambda s, t, y, loss: ref_crd(s["embedding"], t["embedding"], loss),
        prime=_prime_crd,
        label="crd-queue-only",
    ),
    BenchCase(
        loss="affinity",
        params={"temperature": 0.07},
        make=_make_pair(256, 512, (6, 8, 12)),
        reference=lambda s, t, y, loss: ref_affinity(s["embedding"], t["embedding"]),
    ),
    BenchCase(
        loss="affinity",
        params={"student_other": "text", "teacher_other": "text", "temperature": 0.05},
        make=_make_affinity_cross,
        reference=lambda s, t, y, loss: ref_affinity(
            s["embedding"], t["embedding"], s["text"], t["text"], temperature=0.05
        ),
        label="affinity-cross",
    ),
    BenchCase(
        loss="nd",
        params={"num_classes": ND_CLASSES},
        make=_make_nd,
        reference=lambda s, t, y, loss: ref_nd_from_loss(s["embedding"], t["embedding"], y, loss),
        prime=_prime_nd,
    ),
    BenchCase(
        loss="ofa",
        params={"student": "features/layer3", "eps": 1.5, "width": 256},
        make=_make_ofa,
        reference=lambda s, t, y, loss: ref_ofa(s["features/layer3"], t["logits"], y, loss),
    ),
    BenchCase(
        loss="ofa",
        params={"student": "features/block6", "eps": 1.0, "width": 256},
        make=_make_ofa_tokens,
        reference=lambda s, t, y, loss: ref_ofa(s["features/block6"], t["logits"], y, loss),
        label="ofa-tokens",
    ),
]
