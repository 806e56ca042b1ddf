"""``lwf`` (Learning without Forgetting) against a NumPy re-derivation of Li & Hoiem's distillation
term over the old classes, a gradient check, its invariants and its bad parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ConfigError
from crossdistill.losses import build_loss


def ref_lwf(s: np.ndarray, t: np.ndarray, classes: list[int] | None, temperature: float) -> float:
    """``T² · mean_i Σ_c p_t(c) log(p_t(c) / p_s(c))``, softmaxes over ``classes`` at ``T``,
    one example at a time (the paper's eq. 2 with the teacher's entropy added back)."""
    keep = list(range(s.shape[1])) if classes is None else classes
    total = 0.0
    for i in range(len(s)):
        zs, zt = s[i, keep] / temperature, t[i, keep] / temperature
        ps = np.exp(zs - zs.max()) / np.exp(zs - zs.max()).sum()
        pt = np.exp(zt - zt.max()) / np.exp(zt - zt.max()).sum()
        total += float(np.sum(pt * np.log(pt / ps)))
    return temperature**2 * total / len(s)


def _run(loss: torch.nn.Module, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return loss(
        Knowledge({"logits": s}, source="student"), Knowledge({"logits": t}, source="teacher")
    )


@pytest.mark.parametrize("classes", [None, [0, 1], [1, 3, 4]])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_matches_the_numpy_reference(classes: list[int] | None, temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    t = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    loss = build_loss("lwf", {"temperature": temperature, "classes": classes})
    got = float(_run(loss, s, t))
    assert got == pytest.approx(ref_lwf(s.numpy(), t.numpy(), classes, temperature), rel=1e-10)


def test_without_classes_it_is_kd() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    lwf = _run(build_loss("lwf", {"temperature": 3.0}), s, t)
    kd = _run(build_loss("kd", {"temperature": 3.0}), s, t)
    torch.testing.assert_close(lwf, kd)


def test_the_new_classes_do_not_count() -> None:
    # logits of classes outside `classes` may be anything: the loss and its gradient ignore them
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    other = s.clone()
    other[:, 3:] = torch.randn(4, 3, generator=g) * 10
    loss = build_loss("lwf", {"classes": [0, 1, 2]})
    torch.testing.assert_close(_run(loss, s, t), _run(loss, other, t))
    s.requires_grad_(True)
    _run(loss, s, t).backward()
    assert s.grad is not None and bool((s.grad[:, 3:] == 0).all())
    assert bool((s.grad[:, :3] != 0).any())
    # equal logits on the old classes: nothing to learn, whatever the new ones hold
    assert float(_run(loss, other, torch.cat([other[:, :3], t[:, 3:]], 1))) == pytest.approx(0.0)


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, generator=g, dtype=torch.float64)
    loss = build_loss("lwf", {"temperature": 2.0, "classes": [0, 2, 4]})
    assert torch.autograd.gradcheck(lambda z: _run(loss, z, t), (s,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"classes": [0]}, "at least two distinct"),
        ({"classes": [1, 1]}, "at least two distinct"),
        ({"classes": [-1, 2]}, "at least two distinct"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_parameters(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_loss("lwf", params)


def test_classes_beyond_the_logits() -> None:
    loss = build_loss("lwf", {"classes": [0, 9]})
    with pytest.raises(ConfigError, match="beyond the 5 logits"):
        _run(loss, torch.randn(2, 5), torch.randn(2, 5))
