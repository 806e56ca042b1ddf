"""CRD: contrastive representation distillation with a momentum queue of negatives."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.core.knowledge import Knowledge
from crossdistill.losses.checks import HyperParameterError, check_range
from crossdistill.losses.gather import gather_rows
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES


@LOSSES.register("crd")
class CRDLoss(PairLoss):
    r"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020,
    arXiv:1910.10699) with a MoCo-style queue of negatives (He et al., CVPR 2020) in place of
    CRD's dataset-sized memory bank.

    Learned linear heads ``g_s``, ``g_t`` map the (flattened) student and teacher tensors to
    ``dim``-wide vectors, L2-normalized: ``u_i = g_s(s_i)/‖·‖``, ``v_i = g_t(t_i)/‖·‖``. With the
    queue ``Q_t`` of past teacher vectors, ``Q_s`` of past student vectors and, when
    ``batch_negatives``, the batch ``V`` / ``U`` (of every rank under DDP)::

        L_s = -(1/B) Σ_i log( exp(u_i·v_i/τ) / Σ_{k ∈ V ∪ Q_t} exp(u_i·k/τ) )
        L_t = -(1/B) Σ_i log( exp(v_i·u_i/τ) / Σ_{k ∈ U ∪ Q_s} exp(v_i·k/τ) )
        L   = L_s + L_t

    (without ``batch_negatives`` the candidates are the positive and the queue only, as in
    MoCo). Both directions are summed, as CRD sums its student- and teacher-anchored terms.

    **Objective: InfoNCE (softmax), not CRD's NCE (paper Eq. 18-19).** CRD's NCE needs the
    dataset size ``N`` and a normalizing constant ``Z`` frozen on the first batch, both tied to a
    memory bank indexed by sample id; with a queue neither has a meaning, while InfoNCE
    (van den Oord et al. 2018) is a lower bound on the same mutual information with no extra
    constants, and is what MoCo pairs with its queue. So values are not comparable with
    torchdistill's ``CRDLoss`` (NCE on a memory bank).

    State: the heads (lazily sized at the first call — the Distiller's no-grad check forward
    materializes them before the optimizer is made), the two queues (``queue_size × dim``), their
    write pointer and fill count are parameters/buffers, trained and checkpointed with the
    student. The queue starts empty (no random negatives); after each training-mode call the
    detached vectors of the whole (all-rank) batch are written at the pointer, FIFO with
    wrap-around. Eval mode never writes.

    DDP: the batches of all ranks are gathered *with* gradient (open_clip's
    ``gather_with_grad=True``): with equal per-rank batches the mean of the ranks' values (what
    DDP's gradient averaging optimizes) equals the single-process value on the concatenated
    batch, its gradients too, and the queues are identical on every rank. Training with N
    processes at batch B/N gives the single-process student at batch B (tested, within 1e-6).

    Computed in the dtype of the heads (``.double()`` the loss for float64).
    """

    # a log range around the paper's temperature, 0.07
    search_space: ClassVar[dict[str, dict]] = {
        "temperature": {"low": 0.02, "high": 0.3, "log": True}
    }

    ranks = (2, 3, 4)

    def __init__(
        self,
        student: str = "embedding",
        teacher: str = "embedding",
        dim: int = 128,
        queue_size: int = 4096,
        temperature: float = 0.07,
        batch_negatives: bool = True,
    ) -> None:
        super().__init__(student, teacher)
        if dim < 1:
            raise HyperParameterError(f"loss 'crd': dim must be >= 1, got {dim}")
        if queue_size < 0:
            raise HyperParameterError(f"loss 'crd': queue_size must be >= 0, got {queue_size}")
        if queue_size == 0 and not batch_negatives:
            raise HyperParameterError(
                "loss 'crd' has no negatives: queue_size is 0 and batch_negatives is false",
                hint="set queue_size > 0 or batch_negatives: true",
            )
        self.temperature = check_range("crd", "temperature", temperature, positive=True)
        self.batch_negatives = batch_negatives
        self.student_head = nn.LazyLinear(dim)
        self.teacher_head = nn.LazyLinear(dim)
        self.register_buffer("student_queue", torch.zeros(queue_size, dim))
        self.register_buffer("teacher_queue", torch.zeros(queue_size, dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))

    def embed(self, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        dtype = head.weight.dtype
        # .to(dtype) after the head too: under autocast a Linear returns float16
        return F.normalize(head(x.flatten(1).to(dtype)).to(dtype), dim=1)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        u = self.embed(self.student_head, s)
        v = self.embed(self.teacher_head, t)
        all_u, offset = gather_rows(u)
        all_v, _ = gather_rows(v)
        n = int(self.queue_len)
        # copies: the enqueue below writes into the queues that backward still needs
        loss = self._direction(u, v, all_v, self.teacher_queue[:n].clone(), offset)
        loss = loss + self._direction(v, u, all_u, self.student_queue[:n].clone(), offset)
        if self.training:
            self._enqueue(all_u.detach(), all_v.detach())
        return loss

    def _direction(
        self,
        anchor: torch.Tensor,
        positive: torch.Tensor,
        batch: torch.Tensor,
        queue: torch.Tensor,
        offset: int,
    ) -> torch.Tensor:
        """InfoNCE of ``anchor`` rows against their positives among the candidates."""
        with torch.autocast(anchor.device.type, enabled=False):  # cosines / τ in full precision
            if self.batch_negatives:
                logits = anchor @ torch.cat([batch, queue]).T
                labels = torch.arange(anchor.shape[0], device=anchor.device) + offset
            else:
                pos = (anchor * positive).sum(dim=1, keepdim=True)
                logits = torch.cat([pos, anchor @ queue.T], dim=1)
                labels = torch.zeros(anchor.shape[0], dtype=torch.long, device=anchor.device)
            return F.cross_entropy(logits / self.temperature, labels)

    @torch.no_grad()
    def _enqueue(self, u: torch.Tensor, v: torch.Tensor) -> None:
        size = self.student_queue.shape[0]
        n = u.shape[0]
        if size == 0 or n == 0:
            return
        start = int(self.queue_ptr)
        if n > size:  # only the newest `size` rows survive; they go where they would have landed
            u, v, start = u[-size:], v[-size:], (start + n - size) % size
        idx = (start + torch.arange(u.shape[0], device=u.device)) % size
        self.student_queue[idx] = u.to(self.student_queue.dtype)
        self.teacher_queue[idx] = v.to(self.teacher_queue.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % size)
        self.queue_len.fill_(min(int(self.queue_len) + n, size))
