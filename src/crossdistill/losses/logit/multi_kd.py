"""Knowledge distillation from several teachers, weighted per example."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.errors import ConfigError
from crossdistill.losses.checks import HyperParameterError, check_range
from crossdistill.losses.logit._common import LogitLoss, class_indices, logit_pair
from crossdistill.losses.registry import LOSSES, Needs

Weighting = Literal["fixed", "confidence", "entropy", "label", "learned"]


def _fixed(loss: MultiKDLoss, log_p: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return log_p.new_zeros(log_p.shape[:2])


def _confidence(loss: MultiKDLoss, log_p: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return log_p.amax(dim=2)  # log max_c p_c


def _entropy(loss: MultiKDLoss, log_p: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    p = log_p.exp()
    entropy = -torch.special.xlogy(p, p).sum(dim=2)  # xlogy: p = 0 adds 0, not 0 · -inf
    return -entropy / loss.weight_temperature


def _label(loss: MultiKDLoss, log_p: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    assert y is not None
    return log_p.gather(2, y.expand(log_p.shape[0], -1)[..., None])[..., 0]  # log p_y


def _learned(loss: MultiKDLoss, log_p: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return loss.teacher_scores[:, None].to(log_p.dtype).expand(log_p.shape[:2])


# weighting -> each teacher's log-weight per example, up to a constant, shape (teachers, batch)
_SCORES: dict[str, Callable[[MultiKDLoss, torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "fixed": _fixed,
    "confidence": _confidence,
    "entropy": _entropy,
    "label": _label,
    "learned": _learned,
}


@LOSSES.register("multi_kd")
class MultiKDLoss(LogitLoss):
    r"""Knowledge distillation from several teachers mixed per example (Hinton, Vinyals & Dean
    2015, arXiv:1503.02531; the multi-teacher setting of You et al., "Learning from Multiple
    Teacher Networks", KDD 2017).

    With ``p_m = softmax(t_m / T)`` the softened distribution of teacher ``m`` (its logits read
    from the teacher's Knowledge key ``teachers[m]``) and ``α_im`` its weight for example ``i``
    (``Σ_m α_im = 1``), the target is the mixture **in probability space**
    ``p̄_i = Σ_m α_im p_im`` and

    ``L = T² · (1/B) Σ_i KL(p̄_i || softmax(s_i / T))``

    as in ``kd``, which it equals with one teacher. The weights are ``α_im ∝ w_m · g_im``:
    ``w`` the optional prior ``weights`` (normalised; equal by default) and ``g`` per
    ``weighting``, all computed from the softened ``p_m`` (at ``T``):

    - ``fixed``: ``g = 1``, the weights are ``w`` alone;
    - ``confidence``: ``g_im = max_c p_imc``, each teacher's largest probability;
    - ``entropy``: ``g_im = exp(-H(p_im) / τ_w)``, i.e. a softmax over teachers of minus the
      entropy over ``weight_temperature`` ``τ_w``: a sure teacher counts more;
    - ``label``: ``g_im = p_im[y_i]``, each teacher's probability of the true class (needs the
      target). In the spirit of CA-MKD (Zhang, Chen & Wang, "Confidence-Aware Multi-Teacher
      Knowledge Distillation", ICASSP 2022, arXiv:2201.00007), which weighs by
      ``(1 - softmax_m(CE_im)) / (M - 1)`` of each teacher's cross-entropy ``CE_im`` with the
      label; here the weights are ``softmax_m(-CE_im)``, the normalised probabilities;
    - ``learned``: ``α_m = softmax(θ)_m``, one trainable score ``θ_m`` per teacher (a parameter
      of this loss, trained and checkpointed with the student: ``Distiller.trainable()``),
      starting at ``log w``.

    ``drop`` (teacher dropping, UNIC: Sariyildiz et al., "UNIC: Universal Classification Models
    via Multi-teacher Distillation", ECCV 2024, arXiv:2408.17062, §3.3): while training, each
    teacher is left out of each example's mixture with probability ``drop`` and the weights of
    the others renormalised; as in UNIC, the teacher the student is furthest from on that
    example (the largest ``KL(p_im || p_s,i)``) is never dropped, so one always remains. UNIC
    drops per-teacher loss terms; here a dropped teacher leaves the mixture. The draws come
    from torch's global random number generator (as dropout's do), so a seeded run, and a
    resumed one, draws the same; evaluation never drops.

    The teachers are Knowledge keys: ``teachers: [member0/logits, member2/logits]``, or by
    default the first ``members`` members of an ensemble teacher (``member<i>/logits``, two
    unless ``members`` says how many). A term reading ``member0/logits`` alone and a feature
    term reading ``member1/features/...`` give different keys different teachers.
    """

    who = "multi_kd"
    search_space: ClassVar[dict[str, dict]] = {
        "temperature": {"low": 1.0, "high": 8.0, "log": True},
        "drop": {"low": 0.0, "high": 0.5},
    }

    def __init__(
        self,
        temperature: float = 4.0,
        weighting: Weighting = "fixed",
        members: int | None = None,
        teachers: list[str] | None = None,
        weights: list[float] | None = None,
        weight_temperature: float = 1.0,
        drop: float = 0.0,
        *,
        student: str = LOGITS,
    ) -> None:
        super().__init__(student, teacher=None)
        keys = self._teacher_keys(members, teachers)
        self.teacher_keys = keys
        self.defaulted = teachers is None  # then a member beyond `members` is an error
        self.temperature = check_range("multi_kd", "temperature", temperature, positive=True)
        self.weight_temperature = check_range(
            "multi_kd", "weight_temperature", weight_temperature, positive=True
        )
        if not (math.isfinite(drop) and 0 <= drop < 1):
            raise HyperParameterError(
                f"loss 'multi_kd': drop must be in [0, 1), got {drop!r}",
                hint="the probability of leaving a teacher out of an example's mixture; "
                "UNIC's code defaults to 0.5",
            )
        self.drop = float(drop)
        self.weighting = weighting
        # the prior's logs as Python floats: exact in float64 inputs, no float64 buffer (which
        # some devices lack), nothing added to checkpoints
        self.log_weights = self._log_prior(weights, len(keys))
        if weighting == "learned":
            start = self.log_weights or (0.0,) * len(keys)
            self.teacher_scores = nn.Parameter(torch.tensor(start, dtype=torch.float32))

    @staticmethod
    def _teacher_keys(members: int | None, teachers: list[str] | None) -> tuple[str, ...]:
        if members is not None and members < 1:
            raise HyperParameterError(
                f"loss 'multi_kd': members must be >= 1, got {members!r}",
                hint="the number of ensemble members to read (member0/logits, ...)",
            )
        if teachers is None:
            return tuple(f"member{i}/logits" for i in range(members or 2))
        if not teachers or len(set(teachers)) != len(teachers):
            raise HyperParameterError(
                f"loss 'multi_kd': teachers must name one or more different keys, got {teachers!r}",
                hint="e.g. teachers: [member0/logits, member1/logits]",
            )
        if members is not None and members != len(teachers):
            raise HyperParameterError(
                f"loss 'multi_kd': members: {members} and {len(teachers)} teachers {teachers}",
                hint="give teachers: or members:, not both",
            )
        return tuple(teachers)

    @staticmethod
    def _log_prior(weights: list[float] | None, count: int) -> tuple[float, ...]:
        """``log(w / Σ w)`` of the ``weights`` (empty without: equal weights)."""
        if weights is None:
            return ()
        if len(weights) != count or not all(math.isfinite(w) and w > 0 for w in weights):
            raise HyperParameterError(
                f"loss 'multi_kd': weights must be {count} finite numbers > 0, one per teacher, "
                f"got {weights!r}",
                hint="give one weight per teacher key, in the order of `teachers:` (or of the "
                "members); leave a teacher out by not naming it",
            )
        total = math.fsum(weights)
        return tuple(math.log(w / total) for w in weights)

    def needs(self) -> Needs:
        return Needs((self.student_key,), self.teacher_keys, self.weighting == "label")

    def mixture_weights(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The ``(teachers, batch)`` weights ``α`` of this batch (dropped teachers at 0)."""
        return self._parts(student, teacher, target)[2].exp()

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, log_p, log_alpha = self._parts(student, teacher, target)
        # log Σ_m α_m p_m, stable; a dropped teacher's log α is -inf and adds nothing
        log_mix = torch.logsumexp(log_alpha[..., None] + log_p, dim=0)
        log_p_s = F.log_softmax(s / self.temperature, dim=1)
        kl = F.kl_div(log_p_s, log_mix, reduction="batchmean", log_target=True)
        return self.temperature**2 * kl

    def _parts(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Student logits ``(B, C)``, the teachers' softened log-probabilities ``(M, B, C)``
        and their log-weights ``(M, B)``."""
        if self.defaulted and f"member{len(self.teacher_keys)}/logits" in teacher:
            raise ConfigError(
                f"loss 'multi_kd' reads the first {len(self.teacher_keys)} members of the "
                f"ensemble, and the teacher has more (it emits "
                f"'member{len(self.teacher_keys)}/logits')",
                hint="set the loss's `members:` to the ensemble's size, or name the members "
                "to read with `teachers: [member0/logits, ...]`",
            )
        logits = [
            logit_pair(student, teacher, self.who, self.student_key, key)
            for key in self.teacher_keys
        ]
        s = logits[0][0]
        log_p = torch.stack([F.log_softmax(t / self.temperature, dim=1) for _, t in logits])
        y = class_indices(target, s, self.who) if self.weighting == "label" else None
        scores = _SCORES[self.weighting](self, log_p, y)
        if self.log_weights and self.weighting != "learned":  # learned: started from it
            prior = torch.tensor(self.log_weights, dtype=scores.dtype, device=scores.device)
            scores = scores + prior[:, None]
        if self.training and self.drop > 0 and len(self.teacher_keys) > 1:
            scores = scores.masked_fill(~self._kept(s, log_p), float("-inf"))
        return s, log_p, F.log_softmax(scores, dim=0)

    @torch.no_grad()
    def _kept(self, s: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        """``(M, B)``: which teachers stay in each example's mixture; each is dropped with
        probability ``drop``, except the one furthest from the student (UNIC's rule)."""
        keep = torch.rand(log_p.shape[:2], device=log_p.device) >= self.drop
        log_p_s = F.log_softmax(s / self.temperature, dim=1)
        p = log_p.exp()
        kl = (torch.special.xlogy(p, p) - p * log_p_s).sum(dim=2)  # (M, B): KL(p_m || p_s)
        keep[kl.argmax(dim=0), torch.arange(keep.shape[1], device=keep.device)] = True
        return keep
