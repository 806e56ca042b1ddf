"""Annealed values: a loss weight or hyper-parameter that moves while training runs.

A recipe's ``schedule:`` (:class:`~crossdistill.config.AnnealSpec`) says where a value starts,
where it ends, along which shape and over which window of training. Its value is a function of
training *progress* alone, ``p = optimizer steps taken / total steps``, so a run resumed from a
checkpoint computes exactly the values the uninterrupted run did, with no state to save.
"""

from __future__ import annotations

import math

from crossdistill.config import AnnealSpec


def anneal(spec: AnnealSpec, progress: float) -> float:
    """The value of ``spec`` at training progress ``progress`` in [0, 1].

    Before the window ``spec.over = (a, b)`` it is ``start``, after it ``end``; inside it moves
    with ``u = (p - a) / (b - a)``: ``linear`` ``start + (end - start)·u``, ``cosine`` (slow at
    both ends, as SGDR's learning rate, Loshchilov & Hutter 2017, arXiv:1608.03983)
    ``start + (end - start)·(1 - cos(π·u)) / 2``, ``step`` ``start`` until ``u`` reaches 1.
    """
    a, b = spec.over
    u = min(1.0, max(0.0, (progress - a) / (b - a)))
    if spec.shape == "step":
        frac = 1.0 if u >= 1.0 else 0.0
    elif spec.shape == "cosine":
        frac = (1.0 - math.cos(math.pi * u)) / 2.0
    else:
        frac = u
    if frac == 0.0:  # exact ends: no rounding in start + (end - start)·frac
        return float(spec.start)
    if frac == 1.0:
        return float(spec.end)
    return spec.start + (spec.end - spec.start) * frac
