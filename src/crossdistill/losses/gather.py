"""Batch-level losses under DDP: every rank's rows, gathered with their gradients."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class _GatherWithGrad(torch.autograd.Function):
    """``(world, *x.shape)``: ``x`` of every rank; backward sums every rank's gradient for this
    rank's rows (an all-reduce, which gloo and nccl both have)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank = dist.get_rank()
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank]


def gather_rows(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The rows of ``z`` from every rank, in rank order, and where this rank's rows start.

    The gather is differentiable: in backward each rank receives the gradients every rank's
    loss sends to its rows, so under DDP the averaged gradients are exactly those of one
    process on the concatenated batch. Ranks may hold different batch sizes (e.g. a last,
    short batch). Without an initialized process group this is ``(z, 0)``.
    """
    if not distributed():
        return z, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([z.shape[0]], device=z.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = torch.cat([z, z.new_zeros((max(counts) - z.shape[0], *z.shape[1:]))])
    rows = [p[:n] for p, n in zip(_GatherWithGrad.apply(padded), counts, strict=True)]
    rows[rank] = z  # this rank's own rows keep their direct path
    return torch.cat(rows), sum(counts[:rank])
