"""crd (InfoNCE on a momentum queue) and affinity (TinyCLIP), checked against NumPy re-derivations
of the papers' formulas (``ref_contrastive``), by gradcheck, by invariants (queue FIFO and
wrap-around, eval mode, checkpointed state, zero at a perfect match) and, for crd, by a
two-process gloo run against one process on the concatenated batch.

torchdistill 1.1.5 has neither loss (its CRDLoss is NCE on a memory bank, its AffinityLoss is
KTA's spatial affinity), so there is no torchdistill comparison here."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ref_contrastive import BENCH_CASES, ref_affinity, ref_crd

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ConfigError, KnowledgeError, ShapeError
from crossdistill.losses import build_loss


def emb(x: torch.Tensor, source: str, /, **more: torch.Tensor) -> Knowledge:
    return Knowledge({"embedding": x, **more}, source=source)


def randn(*shape: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def crd_loss(seed: int = 0, s_dim: int = 10, t_dim: int = 14, **params) -> torch.nn.Module:
    """A float64 crd with its heads sized (seeded) and ``params`` (small queue by default)."""
    params = {"dim": 8, "queue_size": 16, **params}
    torch.manual_seed(seed)
    loss = build_loss("crd", params)
    with torch.no_grad():
        loss.student_head(torch.zeros(1, s_dim))
        loss.teacher_head(torch.zeros(1, t_dim))
    return loss.double()


def fill_queue(loss, steps: int, batch: int, s_dim: int = 10, t_dim: int = 14, seed: int = 100):
    """Real training-mode calls, so the queue holds what the loss itself enqueued."""
    loss.train()
    with torch.no_grad():
        for k in range(steps):
            loss(
                emb(randn(batch, s_dim, seed=seed + k), "s"), emb(randn(batch, t_dim, seed=-k), "t")
            )


# --------------------------------------------------------------------------------------------
# 1. NumPy references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_negatives", [True, False])
@pytest.mark.parametrize("filled", [0, 1, 3])  # queue: empty, partly filled, wrapped around
def test_crd_matches_numpy_reference(batch_negatives: bool, filled: int) -> None:
    loss = crd_loss(batch_negatives=batch_negatives)
    fill_queue(loss, filled, batch=6)
    s, t = randn(5, 10, seed=1) * 2, randn(5, 14, seed=2)
    # the reference reads the state before the call: the call enqueues only after the loss
    expected = ref_crd(s.numpy(), t.numpy(), loss)
    got64 = loss(emb(s, "s"), emb(t, "t"))
    assert got64.dtype == torch.float64 and got64.dim() == 0
    np.testing.assert_allclose(got64.item(), expected, rtol=1e-9)
    loss.eval()
    expected = ref_crd(s.numpy(), t.numpy(), loss)
    np.testing.assert_allclose(loss(emb(s, "s"), emb(t, "t")).item(), expected, rtol=1e-9)
    loss32 = copy.deepcopy(loss).float()
    got32 = loss32(emb(s.float(), "s"), emb(t.float(), "t"))
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.item(), expected, rtol=1e-5)


def test_crd_flattens_maps_and_tokens() -> None:
    loss = crd_loss(s_dim=2 * 3 * 3, t_dim=4 * 3)
    s, t = randn(4, 2, 3, 3, seed=3), randn(4, 4, 3, seed=4)
    expected = ref_crd(s.numpy(), t.numpy(), loss)
    np.testing.assert_allclose(loss(emb(s, "s"), emb(t, "t")).item(), expected, rtol=1e-9)


AFFINITY_CASES = [
    {},
    {"temperature": 0.5},
    {"self_pairs": True},
    {"self_pairs": True, "temperature": 1.0},
]


@pytest.mark.parametrize("params", AFFINITY_CASES, ids=str)
@pytest.mark.parametrize(("b", "ds", "dt"), [(2, 3, 5), (7, 16, 9), (32, 64, 128)])
def test_affinity_matches_numpy_reference(params: dict, b: int, ds: int, dt: int) -> None:
    loss = build_loss("affinity", params)
    for seed in range(2):
        s, t = randn(b, ds, seed=seed), randn(b, dt, seed=seed + 10)
        expected = ref_affinity(s.numpy(), t.numpy(), **params)
        got64 = loss(emb(s, "s"), emb(t, "t"))
        assert got64.dtype == torch.float64
        np.testing.assert_allclose(got64.item(), expected, rtol=1e-9, atol=1e-12)
        got32 = loss(emb(s.float(), "s"), emb(t.float(), "t"))
        assert got32.dtype == torch.float32
        np.testing.assert_allclose(got32.item(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_affinity_cross_modal_matches_numpy_reference(temperature: float) -> None:
    loss = build_loss(
        "affinity", {"student_other": "text", "teacher_other": "text", "temperature": temperature}
    )
    s, so = randn(6, 4, 2, 2, seed=1), randn(6, 16, seed=2)  # a map flattened to 16
    t, to = randn(6, 12, seed=3), randn(6, 12, seed=4)
    expected = ref_affinity(s.numpy(), t.numpy(), so.numpy(), to.numpy(), temperature)
    got = loss(emb(s, "s", text=so), emb(t, "t", text=to))
    np.testing.assert_allclose(got.item(), expected, rtol=1e-9)
    got32 = loss(emb(s.float(), "s", text=so.float()), emb(t.float(), "t", text=to.float()))
    np.testing.assert_allclose(got32.item(), expected, rtol=1e-5)


@pytest.mark.parametrize("case", BENCH_CASES, ids=lambda c: c.id)
def test_bench_cases_agree_with_their_reference(case) -> None:
    """The benchmark's small shapes: our loss equals the case's NumPy reference (float64)."""
    got, expected = case.small_values()
    np.testing.assert_allclose(got, expected, rtol=1e-9)


# --------------------------------------------------------------------------------------------
# 2. gradcheck
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_negatives", [True, False])
def test_crd_gradcheck(batch_negatives: bool) -> None:
    loss = crd_loss(batch_negatives=batch_negatives, s_dim=5, t_dim=4, dim=3, queue_size=4)
    fill_queue(loss, 1, batch=3, s_dim=5, t_dim=4)
    loss.eval()  # a fixed queue between gradcheck's evaluations
    s = randn(3, 5, seed=1).requires_grad_(True)
    t = randn(3, 4, seed=2).requires_grad_(True)
    head = loss.teacher_head.weight
    assert torch.autograd.gradcheck(
        lambda a, b: loss(emb(a, "s"), emb(b, "t")), (s, t), eps=1e-6, atol=1e-6
    )
    # the teacher head is trained too (the teacher tensor itself carries no gradient in use)
    (g,) = torch.autograd.grad(loss(emb(s, "s"), emb(t.detach(), "t")), head)
    assert g.abs().max() > 0


@pytest.mark.parametrize("params", [{}, {"self_pairs": True}])
def test_affinity_gradcheck(params: dict) -> None:
    loss = build_loss("affinity", {"temperature": 0.5, **params})
    s = randn(4, 3, seed=5).requires_grad_(True)
    t = randn(4, 6, seed=6)
    assert torch.autograd.gradcheck(
        lambda a: loss(emb(a, "s"), emb(t, "t")), (s,), eps=1e-6, atol=1e-6
    )
    cross = build_loss("affinity", {"student_other": "x", "teacher_other": "x", "temperature": 0.5})
    x = randn(4, 3, seed=7).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: cross(emb(a, "s", x=b), emb(t, "t", x=randn(4, 6, seed=8))),
        (s, x),
        eps=1e-6,
        atol=1e-6,
    )


# --------------------------------------------------------------------------------------------
# 3. invariants: the queue
# --------------------------------------------------------------------------------------------


def test_crd_queue_is_fifo_with_wrap_around() -> None:
    loss = crd_loss(queue_size=5)
    loss.train()
    batches = [(randn(2, 10, seed=k), randn(2, 14, seed=50 + k)) for k in range(3)]
    with torch.no_grad():
        keys = [
            (loss.embed(loss.student_head, s), loss.embed(loss.teacher_head, t)) for s, t in batches
        ]
    expected_rows = {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1), 4: (2, 0)}
    for k, (s, t) in enumerate(batches):
        loss(emb(s, "s"), emb(t, "t"))
        assert int(loss.queue_len) == min(2 * (k + 1), 5)
    assert int(loss.queue_ptr) == 1  # 6 rows written into 5 slots
    expected_rows[0] = (2, 1)  # the 6th row overwrote the oldest
    for slot, (b, r) in expected_rows.items():
        torch.testing.assert_close(loss.student_queue[slot], keys[b][0][r])
        torch.testing.assert_close(loss.teacher_queue[slot], keys[b][1][r])


def test_crd_batch_larger_than_queue_keeps_the_newest_rows_in_order() -> None:
    big, one_by_one = crd_loss(queue_size=3), crd_loss(queue_size=3)
    fill_queue(big, 1, batch=2)
    fill_queue(one_by_one, 1, batch=2)
    s, t = randn(5, 10, seed=9), randn(5, 14, seed=10)
    big(emb(s, "s"), emb(t, "t"))
    for i in range(5):
        one_by_one(emb(s[i : i + 1], "s"), emb(t[i : i + 1], "t"))
    for name in ("student_queue", "teacher_queue", "queue_ptr", "queue_len"):
        torch.testing.assert_close(getattr(big, name), getattr(one_by_one, name))


def test_crd_backward_after_a_training_call_that_enqueued() -> None:
    # the enqueue writes into the queues after the loss used them; backward must still work
    loss = crd_loss(queue_size=4)
    fill_queue(loss, 1, batch=3)
    s = randn(3, 10, seed=1).requires_grad_(True)
    loss(emb(s, "s"), emb(randn(3, 14, seed=2), "t")).backward()
    assert s.grad is not None and int(loss.queue_len) == 4


def test_crd_does_not_enqueue_in_eval_mode() -> None:
    loss = crd_loss()
    fill_queue(loss, 1, batch=3)
    before = copy.deepcopy(loss.state_dict())
    loss.eval()
    loss(emb(randn(4, 10, seed=1), "s"), emb(randn(4, 14, seed=2), "t"))
    for k, v in loss.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_crd_state_is_checkpointed() -> None:
    loss = crd_loss()
    fill_queue(loss, 3, batch=4)
    state = loss.state_dict()
    assert {"student_queue", "teacher_queue", "queue_ptr", "queue_len"} <= set(state)
    assert {"student_head.weight", "teacher_head.weight"} <= set(state)
    fresh = build_loss("crd", {"dim": 8, "queue_size": 16})  # lazy heads, loaded from the state
    fresh.load_state_dict(state)
    fresh.double().eval()
    loss.eval()
    s, t = randn(4, 10, seed=1), randn(4, 14, seed=2)
    torch.testing.assert_close(fresh(emb(s, "s"), emb(t, "t")), loss(emb(s, "s"), emb(t, "t")))


def test_crd_with_nothing_to_contrast_is_zero() -> None:
    # empty queue, queue-only negatives: the positive is the only candidate, log 1 = 0
    loss = crd_loss(batch_negatives=False)
    assert loss(emb(randn(3, 10, seed=1), "s"), emb(randn(3, 14, seed=2), "t")).item() == 0
    # a batch of one with an empty queue: likewise
    loss = crd_loss()
    assert loss(emb(randn(1, 10, seed=1), "s"), emb(randn(1, 14, seed=2), "t")).item() == 0


def test_crd_temperature_sharpens() -> None:
    # with the student embedded exactly onto its teacher (shared head, same input), a lower
    # temperature gives a lower loss: the positive is the most similar candidate
    values = []
    for temperature in (1.0, 0.1):
        loss = crd_loss(s_dim=6, t_dim=6, temperature=temperature)
        loss.teacher_head.load_state_dict(loss.student_head.state_dict())
        x = randn(8, 6, seed=3)
        values.append(loss(emb(x, "s"), emb(x, "t")).item())
    assert values[1] < values[0]


# --------------------------------------------------------------------------------------------
# 3. invariants: affinity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{}, {"self_pairs": True}])
def test_affinity_is_zero_and_stationary_when_student_equals_teacher(params: dict) -> None:
    loss = build_loss("affinity", params)
    t = randn(6, 9, seed=1)
    s = t.clone().requires_grad_(True)
    value = loss(emb(s, "s"), emb(t, "t"))
    (grad,) = torch.autograd.grad(value, s)
    assert abs(value.item()) < 1e-12 and grad.abs().max().item() < 1e-9


def test_affinity_only_sees_the_gram_matrix() -> None:
    # a wider student that is the teacher through a semi-orthogonal map, and rescaled rows,
    # has the same cosine affinities: the loss is 0
    t = randn(5, 4, seed=2)
    q, _ = torch.linalg.qr(randn(7, 4, seed=3))  # (7, 4), orthonormal columns
    s = (t @ q.T) * torch.tensor([[0.5], [1.0], [2.0], [3.0], [7.0]], dtype=t.dtype)
    assert abs(build_loss("affinity")(emb(s, "s"), emb(t, "t")).item()) < 1e-12


def test_affinity_cross_form_on_one_modality_is_twice_the_self_form() -> None:
    s, t = randn(5, 6, seed=4), randn(5, 3, seed=5)
    cross = build_loss("affinity", {"student_other": "x", "teacher_other": "x"})
    both = cross(emb(s, "s", x=s), emb(t, "t", x=t))
    single = build_loss("affinity", {"self_pairs": True})(emb(s, "s"), emb(t, "t"))
    torch.testing.assert_close(both, 2 * single)


def test_affinity_batch_of_one_has_no_pairs() -> None:
    s = randn(1, 4, seed=1).requires_grad_(True)
    value = build_loss("affinity")(emb(s, "s"), emb(randn(1, 5, seed=2), "t"))
    assert value.item() == 0 and value.requires_grad


# --------------------------------------------------------------------------------------------
# 3. DDP: two gloo processes against one process on the concatenated batch
# --------------------------------------------------------------------------------------------

WORLD, LOCAL_B, DS, DT = 2, 3, 10, 14


def ddp_losses() -> dict[str, torch.nn.Module]:
    """The same freshly built (seeded) losses in every process; crd's queue holds 3 of 8 rows,
    so one global step of 6 rows wraps around."""
    out = {}
    for name, bn in (("crd_batch", True), ("crd_queue", False)):
        loss = crd_loss(seed=0, s_dim=DS, t_dim=DT, queue_size=8, batch_negatives=bn)
        with torch.no_grad():
            for q, seed in ((loss.student_queue, 1), (loss.teacher_queue, 2)):
                q[:3] = torch.nn.functional.normalize(randn(3, 8, seed=seed))
            loss.queue_len.fill_(3)
            loss.queue_ptr.fill_(3)
        out[name] = loss
    out["nd"] = build_loss("nd", {"num_classes": 3}).double()
    out["affinity"] = build_loss("affinity", {"temperature": 0.5}).double()
    return out


def ddp_step(losses, s, t, y) -> dict:
    """One training step of each loss; what the comparison needs."""
    out = {}
    for name, loss in losses.items():
        loss.train()
        a, b = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
        value = loss(emb(a, "s"), emb(b if name != "nd" else b.detach()[:, :DS], "t"), y)
        value.backward()
        out[name] = {
            "value": value.detach(),
            "grad_s": a.grad,
            "params": {n: p.grad.clone() for n, p in loss.named_parameters()},
            "state": {k: v.clone() for k, v in loss.state_dict().items()},
        }
    return out


def ddp_worker(rank: int, init: str, out: str, s, t, y) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        part = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        torch.save(ddp_step(ddp_losses(), s[part], t[part], y[part]), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_crd_and_nd_under_ddp_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    s, t = randn(WORLD * LOCAL_B, DS, seed=11), randn(WORLD * LOCAL_B, DT, seed=12)
    y = torch.tensor([0, 2, 2, 1, 0, 2])
    mp.spawn(
        ddp_worker,
        args=(f"file://{tmp_path / 'init'}", str(tmp_path), s, t, y),
        nprocs=WORLD,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = ddp_step(ddp_losses(), s, t, y)
    for name in ("crd_batch", "crd_queue", "nd", "affinity"):
        one = single[name]
        # every rank enqueued / averaged the same all-gathered rows, in rank order
        for r in ranks:
            for k, v in one["state"].items():
                torch.testing.assert_close(r[name]["state"][k], v, rtol=0, atol=1e-12, msg=k)
        # the value: the mean of the ranks' local losses is the loss of the whole batch
        mean = sum(r[name]["value"] for r in ranks) / WORLD
        torch.testing.assert_close(mean, one["value"], rtol=0, atol=1e-12)
    for name in ("crd_batch", "crd_queue", "nd", "affinity"):
        # the gather carries gradients back to the rows' own rank: DDP's averages are exact
        one = single[name]
        grad_s = torch.cat([r[name]["grad_s"] for r in ranks]) / WORLD
        torch.testing.assert_close(grad_s, one["grad_s"], rtol=0, atol=1e-12)
        for n, g in one["params"].items():
            avg = sum(r[name]["params"][n] for r in ranks) / WORLD
            torch.testing.assert_close(avg, g, rtol=0, atol=1e-12, msg=n)


# --------------------------------------------------------------------------------------------
# 5. bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["crd", "affinity"])
def test_wrong_rank_and_batch_mismatch_name_both_keys_and_shapes(name: str) -> None:
    loss = build_loss(name, {"student": "features/a", "teacher": "embedding"})
    with pytest.raises(ShapeError, match=r"'features/a' \(4\).*'embedding' \(4, 3\)"):
        loss(Knowledge({"features/a": torch.randn(4)}), emb(torch.randn(4, 3), "t"))
    with pytest.raises(ShapeError, match=r"batch sizes differ.*\(4, 2\).*\(5, 3\)"):
        loss(Knowledge({"features/a": torch.randn(4, 2)}), emb(torch.randn(5, 3), "t"))
    with pytest.raises(KnowledgeError, match="features/a"):
        loss(
            Knowledge({"embedding": torch.randn(4, 2)}, source="student"),
            emb(torch.randn(4, 3), "t"),
        )


def test_affinity_cross_form_shape_errors() -> None:
    loss = build_loss("affinity", {"student_other": "text", "teacher_other": "text"})
    t = emb(torch.randn(4, 5), "teacher", text=torch.randn(4, 5))
    with pytest.raises(ShapeError, match=r"'embedding'.*\(4, 6\).*'text' \(4, 7\)"):
        loss(emb(torch.randn(4, 6), "student", text=torch.randn(4, 7)), t)
    with pytest.raises(KnowledgeError, match="text"):
        loss(emb(torch.randn(4, 6), "student"), t)
    assert loss.needs().student == ("embedding", "text")


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("crd", {"temperature": 0.0}, "temperature"),
        ("crd", {"temperature": "hot"}, "temperature"),
        ("crd", {"queue_size": -1}, "queue_size"),
        ("crd", {"dim": 0}, "dim"),
        ("crd", {"queue_size": 0, "batch_negatives": False}, "negatives"),
        ("crd", {"momentum": 0.9}, "momentum"),
        ("affinity", {"temperature": -1.0}, "temperature"),
        ("affinity", {"student_other": "text"}, "teacher_other"),
        ("affinity", {"self_pairs": "sometimes"}, "self_pairs"),
    ],
)
def test_bad_hyper_parameters_are_config_errors(name: str, params: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build_loss(name, params)
