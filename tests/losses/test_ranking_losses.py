"""`inbatch_weighted` and `dual_attention`: NumPy references written from the formulas, one
query / one row at a time, gradcheck in float64, invariants, a peer, and DDP."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ConfigError, KnowledgeError, ShapeError
from crossdistill.losses import build_loss

B, C, D = 4, 3, 5


def _draw(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).normal(size=shape))


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, c, t = _draw((B, D), seed), _draw((B, C, D), seed + 1), _draw((B, C), seed + 2) * 2
    ids = torch.arange(B * C, dtype=torch.int64).view(B, C)
    return q, c, t, ids


def _knowledge(q, c, ids=None) -> Knowledge:
    k = Knowledge({"query": q, "candidates": c})
    if ids is not None:
        k["candidate_ids"] = ids
    return k


# ----------------------------------------------------------------------- inbatch_weighted


def ref_inbatch(q, c, t, ids, tau, tau_w, teacher_weights=True, cosine=True) -> float:
    """The docstring's formula, one query at a time (float64 NumPy)."""
    q, c, t, ids = (np.asarray(x, dtype=np.float64) for x in (q, c, t, ids))
    b, n, _ = c.shape
    flat, flat_ids = c.reshape(b * n, -1), ids.reshape(-1)
    total = 0.0
    for i in range(b):
        qi = q[i] / np.linalg.norm(q[i]) if cosine else q[i]
        z = []
        for j in range(b * n):
            cj = flat[j] / np.linalg.norm(flat[j]) if cosine else flat[j]
            z.append(qi @ cj / tau)
        pos = i * n
        denominator = math.exp(z[pos])
        for j in range(b * n):
            if j == pos:
                continue
            w = 1.0
            if teacher_weights and j // n == i:
                w = 1 / (1 + math.exp(-(t[i, 0] - t[i, j % n]) / tau_w))
            if flat_ids[j] == ids[i, 0]:
                w = 0.0
            denominator += w * math.exp(z[j])
        total += -z[pos] + math.log(denominator)
    return total / b


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("teacher_weights", [True, False])
def test_inbatch_weighted_matches_the_formula(similarity: str, teacher_weights: bool) -> None:
    q, c, t, ids = _inputs()
    ids[2, 1] = ids[0, 0]  # query 0's positive text appears as query 2's negative
    params = {"temperature": 0.7, "weight_temperature": 1.5, "similarity": similarity}
    loss = build_loss("inbatch_weighted", {**params, "teacher_weights": teacher_weights})
    got = loss(_knowledge(q, c, ids), Knowledge({"scores": t}))
    expected = ref_inbatch(q, c, t, ids, 0.7, 1.5, teacher_weights, similarity == "cosine")
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_inbatch_weighted_gradients_and_teacher_detached() -> None:
    q, c, t, ids = _inputs(3)
    loss = build_loss("inbatch_weighted", {"temperature": 0.5})
    t = t.requires_grad_(True)

    def f(q, c):
        return loss(_knowledge(q, c, ids), Knowledge({"scores": t}))

    assert torch.autograd.gradcheck(f, (q.requires_grad_(True), c.requires_grad_(True)))
    f(q, c).backward()
    assert t.grad is None


def test_inbatch_weighted_downweights_what_the_teacher_calls_relevant() -> None:
    q, c, t, ids = _inputs(5)
    loss = build_loss("inbatch_weighted", {})
    base = loss(_knowledge(q, c, ids), Knowledge({"scores": t}))
    trusted = t.clone()
    trusted[:, 1:] = trusted[:, :1] + 20  # the teacher says every negative beats the positive
    assert loss(_knowledge(q, c, ids), Knowledge({"scores": trusted})) < base
    without_ids = loss(_knowledge(q, c), Knowledge({"scores": t}))  # ids are optional
    assert without_ids.item() == pytest.approx(base.item())  # all ids distinct here


def test_inbatch_weighted_without_weights_is_sentence_transformers_mnrl() -> None:
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    q, c, _, ids = _inputs(7)
    ours = build_loss("inbatch_weighted", {"temperature": 0.05, "teacher_weights": False})
    got = ours(_knowledge(q.float(), c.float(), ids), Knowledge())
    mnrl = MultipleNegativesRankingLoss(model=None, scale=20.0)  # type: ignore[arg-type]
    columns = [q.float(), *(c[:, j].float() for j in range(C))]
    expected = mnrl.compute_loss_from_embeddings(columns, labels=None)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert st.__version__


def test_inbatch_weighted_checks_shapes() -> None:
    q, c, t, _ = _inputs()
    loss = build_loss("inbatch_weighted", {})
    with pytest.raises(ShapeError, match="teacher 'scores'"):
        loss(_knowledge(q, c), Knowledge({"scores": t[:, :2]}))
    with pytest.raises(ShapeError, match="query"):
        loss(_knowledge(q[:, :3], c), Knowledge({"scores": t}))


WORLD = 2


def _ddp_value(q, c, t, ids):
    loss = build_loss("inbatch_weighted", {"temperature": 0.4})
    a, b = q.clone().requires_grad_(True), c.clone().requires_grad_(True)
    v = loss(_knowledge(a, b, ids), Knowledge({"scores": t}))
    v.backward()
    return {"value": v.detach(), "grad_q": a.grad, "grad_c": b.grad}


def _ddp_worker(rank: int, init: str, out: str, q, c, t, ids) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        part = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        torch.save(_ddp_value(q[part], c[part], t[part], ids[part]), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_inbatch_weighted_under_ddp_matches_one_process(tmp_path: Path) -> None:
    q, c, t, ids = _inputs(9)
    ids[3, 2] = ids[0, 0]  # a repeated positive across ranks is masked too
    args = (f"file://{tmp_path / 'init'}", str(tmp_path), q, c, t, ids)
    mp.spawn(_ddp_worker, args=args, nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    one = _ddp_value(q, c, t, ids)
    torch.testing.assert_close(sum(r["value"] for r in ranks) / WORLD, one["value"])
    for key in ("grad_q", "grad_c"):
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]) / WORLD, one[key])


# ------------------------------------------------------------------------- dual_attention

LQ, LC = 4, 3


def _attention_case(seed: int = 0):
    """Token states with padding, and a teacher whose rows are distributions over the other
    side's valid tokens (zero elsewhere)."""
    h, g = _draw((B, LQ, D), seed), _draw((B, C, LC, D), seed + 1)
    qm = torch.ones(B, LQ, dtype=torch.bool)
    qm[1, 3:] = False
    qm[2, 2:] = False
    cm = torch.ones(B, C, LC, dtype=torch.bool)
    cm[0, 1, 2:] = False
    cm[3, 0, 1:] = False
    q2c = torch.softmax(_draw((B, C, LQ, LC), seed + 2), -1) * cm[:, :, None, :]
    q2c = q2c / q2c.sum(-1, keepdim=True) * qm[:, None, :, None]
    c2q = torch.softmax(_draw((B, C, LC, LQ), seed + 3), -1) * qm[:, None, None, :]
    c2q = c2q / c2q.sum(-1, keepdim=True) * cm[..., None]
    student = Knowledge(
        {"query_tokens": h, "query_mask": qm, "candidate_tokens": g, "candidate_mask": cm}
    )
    return student, Knowledge({"q2c_attention": q2c, "c2q_attention": c2q})


def ref_dual(student, teacher, tau, directions=("q2c", "c2q")) -> float:
    h, qm = student["query_tokens"].numpy(), student["query_mask"].numpy()
    g, cm = student["candidate_tokens"].numpy(), student["candidate_mask"].numpy()
    out = []
    for name in directions:
        kls = []
        for b in range(B):
            for c in range(C):
                if name == "q2c":
                    rows, rmask, cols, cmask = h[b], qm[b], g[b, c], cm[b, c]
                else:
                    rows, rmask, cols, cmask = g[b, c], cm[b, c], h[b], qm[b]
                att = teacher[f"{name}_attention"][b, c].numpy()
                for i in np.flatnonzero(rmask):
                    js = np.flatnonzero(cmask)
                    z = np.array([rows[i] @ cols[j] / tau for j in js])
                    s = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                    p = att[i, js]
                    kls.append(
                        sum(pk * math.log(pk / sk) for pk, sk in zip(p, s, strict=True) if pk > 0)
                    )
        out.append(np.mean(kls))
    return float(np.mean(out))


@pytest.mark.parametrize("directions", [["q2c", "c2q"], ["q2c"], ["c2q"]])
def test_dual_attention_matches_the_formula(directions: list[str]) -> None:
    student, teacher = _attention_case()
    loss = build_loss("dual_attention", {"directions": directions})
    got = loss(student, teacher)
    assert got.item() == pytest.approx(ref_dual(student, teacher, math.sqrt(D), directions))
    custom = build_loss("dual_attention", {"directions": directions, "temperature": 0.5})
    assert custom(student, teacher).item() == pytest.approx(
        ref_dual(student, teacher, 0.5, directions)
    )


def test_dual_attention_is_zero_when_the_student_attends_like_the_teacher() -> None:
    student, _ = _attention_case(4)
    h, g = student["query_tokens"], student["candidate_tokens"]
    qm, cm = student["query_mask"], student["candidate_mask"]
    tau = math.sqrt(D)
    q2c = torch.softmax(
        (h[:, None] @ g.transpose(-1, -2) / tau).masked_fill(~cm[:, :, None], -1e9), -1
    )
    c2q = torch.softmax(
        (g @ h[:, None].transpose(-1, -2) / tau).masked_fill(~qm[:, None, None], -1e9), -1
    )
    teacher = Knowledge(
        {
            "q2c_attention": q2c * qm[:, None, :, None],
            "c2q_attention": c2q * cm[..., None],
        }
    )
    assert build_loss("dual_attention", {})(student, teacher).item() == pytest.approx(0, abs=1e-12)


def test_dual_attention_gradients_ignore_padding() -> None:
    student, teacher = _attention_case(6)
    loss = build_loss("dual_attention", {})
    h = student["query_tokens"].clone().requires_grad_(True)
    g = student["candidate_tokens"].clone().requires_grad_(True)

    def f(h, g):
        return loss(Knowledge({**student, "query_tokens": h, "candidate_tokens": g}), teacher)

    assert torch.autograd.gradcheck(f, (h, g))
    f(h, g).backward()
    assert h.grad[~student["query_mask"]].abs().sum() == 0
    assert g.grad[~student["candidate_mask"]].abs().sum() == 0
    # what sits at padded positions does not change the value
    noisy = student["query_tokens"].clone()
    noisy[~student["query_mask"]] = 1e3
    assert f(noisy, g.detach()).item() == pytest.approx(f(h.detach(), g.detach()).item())


def test_dual_attention_refuses_tokens_that_do_not_line_up() -> None:
    student, teacher = _attention_case()
    loss = build_loss("dual_attention", {})
    short = Knowledge({**teacher, "q2c_attention": teacher["q2c_attention"][:, :, :3]})
    with pytest.raises(ShapeError, match="tokenized the texts differently"):
        loss(student, short)
    shifted = Knowledge({**teacher, "q2c_attention": teacher["q2c_attention"].roll(1, dims=-1)})
    with pytest.raises(KnowledgeError, match="do not line up"):
        loss(student, shifted)
    with pytest.raises(ConfigError, match="directions"):
        build_loss("dual_attention", {"directions": ["sideways"]})
