"""How a loss family describes itself to ``benchmarks/losses.py``.

Each ``tests/losses/ref_<family>.py`` module holds NumPy references written from the papers'
formulas (used by that family's tests) and a list ``BENCH_CASES`` of :class:`BenchCase`. The
benchmark builds each loss, feeds the same tensors to ours, the NumPy reference and torchdistill
(where it has the loss), and times forward + backward at realistic shapes.

This module has no pytest dependency so the benchmark can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Arrays = dict[str, np.ndarray]
Tensors = dict[str, torch.Tensor]


@dataclass
class BenchCase:
    """One loss configuration for the benchmark.

    - ``make(rng, realistic)`` returns ``(student, teacher, target)``: Knowledge-like dicts of
      float arrays (keys as the loss reads them) and targets (class indices, 0/1 labels) or
      ``None``. ``realistic`` asks for the shapes of a real training step (e.g. batch 64-128,
      ResNet/ViT feature sizes); otherwise small shapes for a quick check.
    - ``reference(student, teacher, target, loss)`` computes the value in NumPy float64 from the
      paper's formula. ``loss`` is our built loss, passed only so that a stateful loss's state
      (a queue, class means) can be read *after* ``prime``; it must not be called.
    - ``prime(loss, rng)`` optionally fills a stateful loss's state before the measured call.
    - ``torchdistill(student, teacher, target)`` optionally computes the same quantity with
      torchdistill 1.1.5 on torch tensors (float32, requires_grad on the student side),
      converted to our convention (``td_note`` says how); ``None`` where torchdistill has no
      such loss.
    """

    loss: str
    params: dict[str, Any]
    make: Callable[[np.random.Generator, bool], tuple[Arrays, Arrays, np.ndarray | None]]
    reference: Callable[[Arrays, Arrays, np.ndarray | None, Any], float]
    torchdistill: Callable[[Tensors, Tensors, torch.Tensor | None], torch.Tensor] | None = None
    prime: Callable[[Any, np.random.Generator], None] | None = None
    td_note: str = ""
    label: str = field(default="")

    @property
    def id(self) -> str:
        return self.label or self.loss

    def small_values(self, seed: int = 0) -> tuple[float, float]:
        """``(ours, reference)`` in float64 at the case's small shapes, for the loss tests."""
        from crossdistill.core.knowledge import Knowledge
        from crossdistill.losses import build_loss

        rng = np.random.default_rng(seed)
        s, t, y = self.make(rng, False)
        loss = build_loss(self.loss, self.params).double()
        if self.prime is not None:
            self.prime(loss, rng)
        expected = self.reference(s, t, y, loss)
        student, teacher = (
            Knowledge({k: torch.from_numpy(v) for k, v in d.items()}, source=n)
            for d, n in ((s, "student"), (t, "teacher"))
        )
        got = loss(student, teacher, None if y is None else torch.from_numpy(y))
        return float(got.item()), float(expected)
