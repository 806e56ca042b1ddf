"""nd (norm and direction, Wang et al. 2023) and ofa (One-for-All KD, Hao et al. 2023), checked
against NumPy re-derivations (``ref_contrastive``), by gradcheck, by invariants (the paper's
special cases, running class means, checkpointed state) and for bad input. Neither loss is in
torchdistill 1.1.5. nd's DDP path is tested with crd's in ``test_contrastive_losses``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ref_contrastive import ref_nd, ref_nd_from_loss, ref_ofa, ref_ofa_criterion

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ConfigError, KnowledgeError, ShapeError
from crossdistill.losses import build_loss
from crossdistill.losses.logit.ofa import ofa_criterion


def randn(*shape: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def labels(n: int, classes: int, seed: int) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def emb(x: torch.Tensor, source: str) -> Knowledge:
    return Knowledge({"embedding": x}, source=source)


# --------------------------------------------------------------------------------------------
# nd
# --------------------------------------------------------------------------------------------


def test_nd_matches_numpy_reference_with_running_class_means() -> None:
    loss = build_loss("nd", {"num_classes": 5})
    seen_t, seen_y = [], []
    for step in range(3):
        s, t, y = randn(8, 6, seed=step) * 2, randn(8, 6, seed=10 + step), labels(8, 5, step)
        seen_t.append(t.numpy())
        seen_y.append(y.numpy())
        got = loss(emb(s, "s"), emb(t, "t"), y)
        # the means are updated before the loss is computed, so the state after the call is
        # the state the call used
        all_t, all_y = np.concatenate(seen_t), np.concatenate(seen_y)
        means = np.zeros((5, 6))
        counts = np.zeros(5)
        for k in range(5):
            if (all_y == k).any():
                means[k], counts[k] = all_t[all_y == k].mean(axis=0), (all_y == k).sum()
        np.testing.assert_allclose(loss.class_means.numpy(), means, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(loss.class_counts.numpy(), counts)
        expected = ref_nd(s.numpy(), t.numpy(), y.numpy(), means, counts)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.item(), expected, rtol=1e-9)
    loss.eval()
    s, t, y = randn(16, 6, seed=7), randn(16, 6, seed=8), labels(16, 5, 9)
    expected = ref_nd_from_loss(s.numpy(), t.numpy(), y.numpy(), loss)
    np.testing.assert_allclose(loss(emb(s, "s"), emb(t, "t"), y).item(), expected, rtol=1e-9)
    loss32 = copy.deepcopy(loss).float()
    got32 = loss32(emb(s.float(), "s"), emb(t.float(), "t"), y)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.item(), expected, rtol=1e-5)


def test_nd_ema_class_means() -> None:
    loss = build_loss("nd", {"num_classes": 3, "momentum": 0.9})
    t1, t2 = randn(2, 4, seed=1), randn(2, 4, seed=2)
    y1, y2 = torch.tensor([0, 0]), torch.tensor([0, 2])
    loss(emb(t1, "s"), emb(t1, "t"), y1)
    torch.testing.assert_close(loss.class_means[0], t1.mean(0))  # first batch sets the mean
    loss(emb(t2, "s"), emb(t2, "t"), y2)
    torch.testing.assert_close(loss.class_means[0], 0.9 * t1.mean(0) + 0.1 * t2[0])
    torch.testing.assert_close(loss.class_means[2], t2[1])
    assert loss.class_means[1].abs().sum() == 0 and loss.class_counts.tolist() == [3, 0, 1]


def test_nd_gradcheck() -> None:
    loss = build_loss("nd", {"num_classes": 4})
    loss.set_class_means(randn(4, 5, seed=1))
    s, t, y = randn(6, 5, seed=2).requires_grad_(True), randn(6, 5, seed=3), labels(6, 4, 4)
    assert torch.autograd.gradcheck(
        lambda a: loss(emb(a, "s"), emb(t, "t"), y), (s,), eps=1e-6, atol=1e-6
    )


def test_nd_is_zero_exactly_when_aligned_with_at_least_the_teachers_norm() -> None:
    loss = build_loss("nd", {"num_classes": 3})
    means = randn(3, 5, seed=1)
    loss.set_class_means(means)
    t, y = randn(4, 5, seed=2), torch.tensor([0, 1, 2, 1])
    direction = F.normalize(means[y], dim=1)
    t_norm = t.norm(dim=1, keepdim=True)
    for factor in (1.0, 3.0):  # ‖s‖ ≥ ‖t‖: no reward for a larger norm
        assert abs(loss(emb(direction * t_norm * factor, "s"), emb(t, "t"), y).item()) < 1e-12
    # shorter than the teacher: positive, and growing the norm along the direction lowers it
    short = loss(emb(direction * t_norm * 0.5, "s"), emb(t, "t"), y)
    longer = loss(emb(direction * t_norm * 0.8, "s"), emb(t, "t"), y)
    assert 0 < longer.item() < short.item()
    # in general ⟨s, ĉ⟩ ≤ ‖s‖ ≤ max(‖s‖, ‖t‖): the loss is never negative
    for seed in range(5):
        assert loss(emb(randn(4, 5, seed=seed), "s"), emb(t, "t"), y).item() >= 0


def test_nd_precomputed_means_are_frozen_and_checkpointed() -> None:
    loss = build_loss("nd", {"num_classes": 3})
    means = randn(3, 4, seed=1)
    loss.set_class_means(means)
    loss.train()
    loss(emb(randn(5, 4, seed=2), "s"), emb(randn(5, 4, seed=3), "t"), labels(5, 3, 1))
    torch.testing.assert_close(loss.class_means, means)  # frozen: no running update
    state = loss.state_dict()
    assert {"class_means", "class_counts", "frozen"} <= set(state)
    fresh = build_loss("nd", {"num_classes": 3})  # lazily sized: loads the saved means
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.class_means, means, check_dtype=False)  # lazy: float32
    assert bool(fresh.frozen)


def test_nd_running_means_only_in_training_mode_and_unseen_classes_are_skipped() -> None:
    loss = build_loss("nd", {"num_classes": 4})
    loss.eval()
    s, t = randn(3, 4, seed=1).requires_grad_(True), randn(3, 4, seed=2)
    value = loss(emb(s, "s"), emb(t, "t"), torch.tensor([0, 1, 2]))
    assert value.item() == 0 and value.requires_grad  # nothing seen: no class means yet
    assert loss.class_counts.sum() == 0
    loss.train()
    loss(emb(s, "s"), emb(t, "t"), torch.tensor([0, 0, 1]))
    loss.eval()
    y = torch.tensor([0, 3, 1])  # class 3 never seen: only samples 0 and 2 count
    expected = ref_nd(
        s.detach().numpy()[[0, 2]],
        t.numpy()[[0, 2]],
        y.numpy()[[0, 2]],
        loss.class_means.numpy(),
        loss.class_counts.numpy(),
    )
    np.testing.assert_allclose(loss(emb(s, "s"), emb(t, "t"), y).item(), expected, rtol=1e-12)


def test_nd_bad_input() -> None:
    loss = build_loss("nd", {"num_classes": 3})
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ConfigError, match="needs the ground-truth class"):
        loss(emb(s, "s"), emb(t, "t"), None)
    with pytest.raises(ShapeError, match=r"'embedding' \(4, 5\).*'embedding' \(4, 6\)") as err:
        loss(emb(s, "s"), emb(torch.randn(4, 6), "t"), torch.tensor([0, 1, 2, 0]))
    assert "adapter" in str(err.value)
    with pytest.raises(ShapeError, match=r"rank 2.*\(4, 5, 2\)"):
        loss(emb(torch.randn(4, 5, 2), "s"), emb(t, "t"), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ShapeError, match="batch sizes differ"):
        loss(emb(s, "s"), emb(torch.randn(3, 5), "t"), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ShapeError, match=r"\[0, 3\)"):
        loss(emb(s, "s"), emb(t, "t"), torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ShapeError, match=r"integer class indices of shape \(4,\)"):
        loss(emb(s, "s"), emb(t, "t"), torch.tensor([0, 1]))
    with pytest.raises(ShapeError, match=r"\(3, D\)"):
        loss.set_class_means(torch.randn(2, 5))
    assert loss.needs().target


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 3, "momentum": 1.0}, "momentum"),
        ({"num_classes": 3, "momentum": "fast"}, "momentum"),
    ],
)
def test_nd_bad_hyper_parameters(params: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build_loss("nd", params)


# --------------------------------------------------------------------------------------------
# ofa
# --------------------------------------------------------------------------------------------

FEATURES = {
    "map": (4, 3, 2, 2),  # (B, C, H, W)
    "tokens": (4, 5, 3),  # (B, N, D)
    "vector": (4, 6),  # (B, D)
}


def ofa_inputs(kind: str, classes: int = 7, seed: int = 0):
    x = randn(*FEATURES[kind], seed=seed)
    z_t = randn(x.shape[0], classes, seed=seed + 1) * 3
    return (
        Knowledge({"features/f": x}),
        Knowledge({"logits": z_t}),
        labels(x.shape[0], classes, seed),
    )


def ofa_loss(**params) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_loss("ofa", {"student": "features/f", "width": 8, **params}).double()


@pytest.mark.parametrize("kind", list(FEATURES))
@pytest.mark.parametrize(("eps", "temperature"), [(1.0, 1.0), (1.5, 1.0), (0.0, 2.0), (2.0, 4.0)])
def test_ofa_matches_numpy_reference(kind: str, eps: float, temperature: float) -> None:
    loss = ofa_loss(eps=eps, temperature=temperature)
    s, t, y = ofa_inputs(kind)
    got64 = loss(s, t, y)
    assert got64.dtype == torch.float64 and got64.dim() == 0
    expected = ref_ofa(s["features/f"].numpy(), t["logits"].numpy(), y.numpy(), loss)
    np.testing.assert_allclose(got64.item(), expected, rtol=1e-9)
    loss32 = copy.deepcopy(loss).float()
    s32 = Knowledge({"features/f": s["features/f"].float()})
    got32 = loss32(s32, Knowledge({"logits": t["logits"].float()}), y)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.item(), expected, rtol=1e-5)


def test_ofa_criterion_matches_numpy_on_raw_logits() -> None:
    for seed in range(3):
        z_s, z_t, y = (
            randn(16, 10, seed=seed) * 3,
            randn(16, 10, seed=seed + 5) * 3,
            labels(16, 10, seed),
        )
        for eps, temperature in ((1.0, 1.0), (1.5, 2.0), (0.0, 1.0)):
            expected = ref_ofa_criterion(z_s.numpy(), z_t.numpy(), y.numpy(), eps, temperature)
            got = ofa_criterion(z_s, z_t, y, eps, temperature)
            np.testing.assert_allclose(got.item(), expected, rtol=1e-12)


@pytest.mark.parametrize("kind", list(FEATURES))
def test_ofa_gradcheck(kind: str) -> None:
    loss = ofa_loss(eps=1.5, temperature=2.0)
    s, t, y = ofa_inputs(kind, classes=4)
    loss(s, t, y)  # size the projector and classifier
    x = s["features/f"].clone().requires_grad_(True)
    z_t = t["logits"].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: loss(Knowledge({"features/f": a}), Knowledge({"logits": b}), y),
        (x, z_t),
        eps=1e-6,
        atol=1e-6,
    )


def soft_ce(z_s, z_t):
    return -(F.softmax(z_t, 1) * F.log_softmax(z_s, 1)).sum(1).mean()


def test_ofa_special_cases_of_eps() -> None:
    z_s, z_t, y = randn(8, 6, seed=1) * 2, randn(8, 6, seed=2) * 2, labels(8, 6, 3)
    hard = F.cross_entropy(z_s, y)
    # ε = 1: the paper's Eq. 4, hard-label CE + CE with the teacher's soft labels
    torch.testing.assert_close(ofa_criterion(z_s, z_t, y, 1.0, 1.0), hard + soft_ce(z_s, z_t))
    # ε = 0: target weight 1, i.e. the soft-label CE plus (1 - p^t_y) × the hard-label CE
    p_t_y = F.softmax(z_t, 1).gather(1, y[:, None])[:, 0]
    per_sample_hard = F.cross_entropy(z_s, y, reduction="none")
    expected = soft_ce(z_s, z_t) + ((1 - p_t_y) * per_sample_hard).mean()
    torch.testing.assert_close(ofa_criterion(z_s, z_t, y, 0.0, 1.0), expected)
    # the temperature divides both sides' logits, with no τ² factor
    torch.testing.assert_close(
        ofa_criterion(z_s, z_t, y, 1.5, 3.0), ofa_criterion(z_s / 3, z_t / 3, y, 1.5, 1.0)
    )
    # a larger ε puts more weight on the target class (p^t_y > 0): the loss grows
    assert ofa_criterion(z_s, z_t, y, 2.0, 1.0) > ofa_criterion(z_s, z_t, y, 1.0, 1.0)


def test_ofa_branch_is_trained_and_checkpointed_with_the_loss() -> None:
    loss = ofa_loss()
    s, t, y = ofa_inputs("map", classes=5)
    loss(s, t, y).backward()
    assert loss.head_weight.shape == (5, 8)  # classes from the teacher's logits
    names = dict(loss.named_parameters())
    assert {"head_weight", "head_bias", "projector.linear.weight", "projector.norm.weight"} <= set(
        names
    )
    assert all(p.grad is not None for p in names.values())
    fresh = build_loss("ofa", {"student": "features/f", "width": 8})  # lazy: sized on load
    fresh.load_state_dict(loss.state_dict())
    torch.testing.assert_close(fresh.double()(s, t, y), loss(s, t, y))
    torch.testing.assert_close(loss.branch_logits(s).shape, torch.Size([4, 5]))


def test_ofa_bad_input() -> None:
    loss = ofa_loss()
    s, t, y = ofa_inputs("tokens")
    with pytest.raises(ConfigError, match="needs the ground-truth class"):
        loss(s, t, None)
    with pytest.raises(ShapeError, match=r"batch sizes differ.*'features/f' \(4, 5, 3\).*\(3, 7\)"):
        loss(s, Knowledge({"logits": t["logits"][:3]}), y)
    with pytest.raises(ShapeError, match=r"'features/f'.*\(4, 5, 3, 2, 1\)"):
        loss(Knowledge({"features/f": torch.randn(4, 5, 3, 2, 1)}), t, y)
    with pytest.raises(ShapeError, match=r"\(batch, classes\)"):
        loss(s, Knowledge({"logits": torch.randn(4, 7, 2)}), y)
    with pytest.raises(KnowledgeError, match="features/f"):
        loss(Knowledge({"logits": torch.randn(4, 7)}, source="student"), t, y)
    with pytest.raises(ShapeError, match="integer class indices"):
        loss(s, t, torch.tensor([0, 1]))
    assert loss.needs().student == ("features/f",) and loss.needs().target


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "student"),
        ({"student": "logits"}, "intermediate feature"),
        ({"student": "features/f", "eps": -1.0}, "eps"),
        ({"student": "features/f", "temperature": 0.0}, "temperature"),
        ({"student": "features/f", "width": 0}, "width"),
        ({"student": "features/f", "width": 1.5}, "width"),
    ],
)
def test_ofa_bad_hyper_parameters(params: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build_loss("ofa", params)
