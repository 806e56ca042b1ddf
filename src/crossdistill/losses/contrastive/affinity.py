"""Affinity mimicking: the student's batch similarity distributions match the teacher's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ConfigError, ShapeError
from crossdistill.losses.checks import check_range
from crossdistill.losses.gather import gather_rows
from crossdistill.losses.pair import PairLoss, shape_str
from crossdistill.losses.registry import LOSSES, Needs


def row_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """``mean_i KL(softmax(t_i) || softmax(s_i))`` over the rows."""
    log_p_t = F.log_softmax(teacher_logits, dim=1)
    log_p_s = F.log_softmax(student_logits, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()


def drop_self(a: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """The ``(b, B)`` affinities of ``b`` rows with all ``B`` rows, without each row's own
    entry (row ``i`` is row ``offset + i`` of all), as ``(b, B - 1)``."""
    b, n = a.shape
    keep = torch.ones(b, n, dtype=torch.bool, device=a.device)
    rows = torch.arange(b, device=a.device)
    keep[rows, rows + offset] = False
    return a[keep].view(b, n - 1)


@LOSSES.register("affinity")
class AffinityLoss(PairLoss):
    r"""Affinity mimicking (TinyCLIP, Wu et al., ICCV 2023, arXiv:2309.12314).

    Rows are flattened and L2-normalized: ``x̂ = x / ‖x‖``.

    *Within one modality* (default): ``A^s = softmax_row(Ŝ Ŝᵀ / τ)``,
    ``A^t = softmax_row(T̂ T̂ᵀ / τ)`` over the batch, and ``L = (1/B) Σ_i KL(A^t_i ‖ A^s_i)``.
    Student and teacher may have different widths; only the ``B × B`` affinities are compared.
    The diagonal (each sample with itself, cosine 1 on both sides) is left out unless
    ``self_pairs``: it carries no information and, at a CLIP-like τ, its ``1/τ`` logit swamps
    every row so that the loss and its gradient vanish. A batch of one then has no pairs and the
    loss is 0.

    *Across two modalities* (TinyCLIP's image-to-text form), when ``student_other`` and
    ``teacher_other`` name a second key on each side: ``A^s = softmax_row(Ŝ_a Ŝ_bᵀ / τ)`` (e.g.
    image→text), ``A^s' = softmax_row(Ŝ_b Ŝ_aᵀ / τ)`` (text→image), the same for the teacher,
    and ``L = (1/B) Σ_i KL(A^t_i ‖ A^s_i) + (1/B) Σ_i KL(A^t'_i ‖ A^s'_i)`` — the paper's
    ``L_I2T + L_T2I``. Here the diagonal is the matched pair and is kept. ``Ŝ_a``/``Ŝ_b`` must
    share a width (a dot product), as must ``T̂_a``/``T̂_b``.

    Under DDP each rank's rows are compared with the rows of every rank (gathered with their
    gradients), so the affinities span the global batch and the gradients DDP averages are
    those of one process on the whole batch.

    KL instead of the paper's cross-entropy: the same gradient (they differ by the teacher's
    entropy, a constant), but 0 at a perfect match. ``τ`` is a fixed hyper-parameter (TinyCLIP
    reuses the CLIP models' learned logit scale; 0.07 is CLIP's initial value).
    """

    ranks = (2, 3, 4)

    def __init__(
        self,
        student: str = "embedding",
        teacher: str = "embedding",
        student_other: str | None = None,
        teacher_other: str | None = None,
        temperature: float = 0.07,
        self_pairs: bool = False,
    ) -> None:
        super().__init__(student, teacher)
        if (student_other is None) != (teacher_other is None):
            raise ConfigError(
                "loss 'affinity': student_other and teacher_other go together (the cross-modal "
                f"form), got student_other={student_other!r}, teacher_other={teacher_other!r}",
                hint="set both to compare e.g. image×text affinities, or neither",
            )
        self.student_other = student_other
        self.teacher_other = teacher_other
        self.temperature = check_range("affinity", "temperature", temperature, positive=True)
        self.self_pairs = self_pairs

    @property
    def cross(self) -> bool:
        return self.student_other is not None

    def needs(self) -> Needs:
        if not self.cross:
            return super().needs()
        return Needs(
            (self.student_key, self.student_other),  # type: ignore[arg-type]
            (self.teacher_key, self.teacher_other),  # type: ignore[arg-type]
        )

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        device = student[self.student_key].device.type if self.student_key in student else "cpu"
        with torch.autocast(device, enabled=False):  # cosines / τ in full precision
            return self._affinity(student, teacher)

    def _affinity(self, student: Knowledge, teacher: Knowledge) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        s, t = F.normalize(s.flatten(1), dim=1), F.normalize(t.flatten(1), dim=1)
        # this rank's rows against the rows of every rank (under DDP: the global batch)
        (all_s, offset), (all_t, _) = gather_rows(s), gather_rows(t)
        if not self.cross:
            a_s, a_t = s @ all_s.T, t @ all_t.T
            if not self.self_pairs:
                if all_s.shape[0] < 2:
                    return (s * 0).sum()
                a_s, a_t = drop_self(a_s, offset), drop_self(a_t, offset)
            return row_kl(a_t / self.temperature, a_s / self.temperature)
        s_b = self._other(student, self.student_other, "student", s)  # type: ignore[arg-type]
        t_b = self._other(teacher, self.teacher_other, "teacher", t)  # type: ignore[arg-type]
        (all_s_b, _), (all_t_b, _) = gather_rows(s_b), gather_rows(t_b)
        a_to_b = row_kl(t @ all_t_b.T / self.temperature, s @ all_s_b.T / self.temperature)
        b_to_a = row_kl(t_b @ all_t.T / self.temperature, s_b @ all_s.T / self.temperature)
        return a_to_b + b_to_a

    def _other(self, side: Knowledge, key: str, name: str, first: torch.Tensor) -> torch.Tensor:
        """The second modality's rows on one side, checked against the first's."""
        if isinstance(side, Knowledge):
            side.require((key,), self.who)
        x = side[key]
        x = x if x.dtype == torch.float64 else x.float()
        first_key = self.student_key if name == "student" else self.teacher_key
        where = f"{name} {first_key!r} (flattened {shape_str(first)}) and {name} {key!r} "
        where += shape_str(x)
        if x.dim() not in self.ranks:
            raise ShapeError(f"{self.who} needs tensors of rank 2, 3 or 4; got {where}")
        x = x.flatten(1)
        if x.shape != first.shape:
            raise ShapeError(
                f"{self.who} compares two modalities by dot product, so they need the same batch "
                f"size and width; got {where}",
                hint=f"project both {name} tensors to one width (e.g. with an adapter)",
            )
        return F.normalize(x, dim=1)
