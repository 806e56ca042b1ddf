"""Expensive set-up that a model's constructor may leave for later, so that a recipe's cheap
checks (data, weights, store, losses' needs on a real batch) fail before it.

A constructor calls :func:`defer` with the costly step (a teacher pass over a vocabulary, say).
Outside :func:`deferred` the step runs at once, as if it were called directly; inside, it is
queued, and whoever opened :func:`deferred` runs the queue once its checks have passed (or drops
it when the model's initial weights are not needed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

Step = Callable[[], None]

_QUEUE: ContextVar[list[Step] | None] = ContextVar("crossdistill_deferred", default=None)


def defer(step: Step) -> None:
    """Run ``step`` now, or, inside :func:`deferred`, when the caller runs the queue."""
    queue = _QUEUE.get()
    if queue is None:
        step()
    else:
        queue.append(step)


@contextlib.contextmanager
def deferred() -> Iterator[list[Step]]:
    """Collect the steps :func:`defer` is given while the block runs, in order; the caller
    runs them (``for step in queue: step()``) after its checks."""
    queue: list[Step] = []
    token = _QUEUE.set(queue)
    try:
        yield queue
    finally:
        _QUEUE.reset(token)
