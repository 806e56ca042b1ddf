"""CPU latency of a model: median milliseconds per call at a given batch size."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def call_times(fn: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def latency_ms(
    model: nn.Module,
    example: torch.Tensor,
    repeats: int = 50,
    warmup: int = 10,
    threads: int | None = 1,
) -> float:
    """Median wall-clock milliseconds of ``model(example)`` in eval mode.

    ``threads=1`` by default: per-image latency on one core is what a deployed small model sees
    and it is far less noisy than multi-threaded timing on a shared machine.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    try:
        times = call_times(lambda: model(example), repeats, warmup)
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
    return 1000 * statistics.median(times)
