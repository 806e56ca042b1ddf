"""A dual encoder (bi-encoder): one text tower embeds queries and candidates independently.

Candidates can then be embedded once, ahead of time, and a query costs one tower pass plus a
dot product against the index — the fast student a cross-encoder teacher is distilled into
(Margin-MSE, listwise KL, in-batch contrastive and, with token states, ``dual_attention``).
The tower is any registered text model mapping ``list[str]`` to ``(B, D)``: ``minilm`` (the
bi-encoder itself), ``tiny_transformer``, ``static_embedding``, ``sentence_transformer``. Both
sides share it (a siamese dual encoder), and it is what export writes: the exported student is
the tower alone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.domains.ranking.data import ranking_columns
from crossdistill.errors import ConfigError
from crossdistill.models.registry import MODELS, build_model

Similarity = Literal["cosine", "dot"]


def text_ids(texts: Sequence[str]) -> torch.Tensor:
    """A stable 64-bit id per text (equal texts, equal ids): how a loss recognises the same
    candidate appearing for two queries of a batch."""
    return torch.tensor(
        [
            int.from_bytes(
                hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "big", signed=True
            )
            for t in texts
        ],
        dtype=torch.int64,
    )


class DualEncoder(nn.Module):
    """``forward(ranking view) -> dict`` of a shared tower applied to queries and candidates.

    Keys: ``scores`` ``(B, C)`` (``scale`` × cosine or dot product of query and candidate
    embeddings), ``query`` ``(B, D)``, ``candidates`` ``(B, C, D)``, ``candidate_ids`` ``(B, C)``
    (:func:`text_ids`); with ``tokens`` also ``query_tokens`` ``(B, Lq, D_tok)``, ``query_mask``
    ``(B, Lq)``, ``candidate_tokens`` ``(B, C, Lc, D_tok)``, ``candidate_mask`` ``(B, C, Lc)``:
    the tower's last-layer token states without special tokens. A recipe names the keys it
    uses: ``outputs: [scores, query, candidates]``.
    """

    def __init__(
        self,
        tower: nn.Module,
        similarity: Similarity = "cosine",
        scale: float = 20.0,
        learn_scale: bool = False,
        tokens: bool = False,
    ) -> None:
        super().__init__()
        if similarity not in ("cosine", "dot"):
            raise ConfigError(
                f"dual_encoder: similarity must be 'cosine' or 'dot', got {similarity!r}"
            )
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"dual_encoder: scale must be a positive number, got {scale!r}")
        if tokens and not hasattr(tower, "token_states"):
            raise ConfigError(
                f"dual_encoder: tokens: true needs a tower with token states; "
                f"{type(tower).__name__} has none",
                hint="use tower minilm or tiny_transformer, or set tokens: false",
            )
        self.tower = tower
        self.similarity = similarity
        self.tokens = bool(tokens)
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def text_encoder(self) -> nn.Module:
        """The tower: ``list[str] -> (B, D)``, what retrieval encodes with and export writes."""
        return self.tower

    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if not self.tokens:
            return {"embedding": self.tower(texts)}
        embedding, states, mask = self.tower.token_states(texts)
        return {"embedding": embedding, "states": states, "mask": mask}

    def forward(self, view: Any) -> dict[str, torch.Tensor]:
        queries, rows = ranking_columns(view, "dual_encoder")
        b, c = len(rows), len(rows[0])
        flat = [text for row in rows for text in row]
        # one tower pass over both sides: one padded batch, and batch-dependent layers see both
        enc = self._encode(queries + flat)
        q, cands = enc["embedding"][:b], enc["embedding"][b:].view(b, c, -1)
        if self.similarity == "cosine":
            sims = torch.einsum("bd,bcd->bc", F.normalize(q, dim=-1), F.normalize(cands, dim=-1))
        else:
            sims = torch.einsum("bd,bcd->bc", q, cands)
        out = {
            "scores": self.log_scale.exp() * sims,
            "query": q,
            "candidates": cands,
            "candidate_ids": text_ids(flat).view(b, c).to(q.device),
        }
        if self.tokens:
            states, mask = enc["states"], enc["mask"]
            # the shared padding is the longest text of either side; trim each side to its own
            lq = int(mask[:b].sum(1).max()) if b else 0
            lc = int(mask[b:].sum(1).max()) if flat else 0
            out["query_tokens"], out["query_mask"] = states[:b, :lq], mask[:b, :lq]
            out["candidate_tokens"] = states[b:, :lc].reshape(b, c, lc, -1)
            out["candidate_mask"] = mask[b:, :lc].reshape(b, c, lc)
        return out

    def extra_repr(self) -> str:
        return f"similarity={self.similarity}, tokens={self.tokens}"


@MODELS.register("dual_encoder")
def dual_encoder(
    tower: str = "minilm",
    tower_params: dict[str, Any] | None = None,
    similarity: Similarity = "cosine",
    scale: float = 20.0,
    learn_scale: bool = False,
    tokens: bool = False,
    init_from: str | None = "tower",
) -> DualEncoder:
    """A dual encoder over the registered text model ``tower`` built with ``tower_params``.

    ``scores`` are ``scale`` × cosine (default; sentence-transformers' contrastive losses use 20)
    or ``scale`` × dot product; ``learn_scale`` trains ``log scale``, which lets Margin-MSE fit
    the teacher's margins in its own units. ``init_from`` passes through to the tower's
    ``init_from`` (``"tower"``: as ``tower_params`` say; ``null``: no initialisation, which is
    how a finished run is rebuilt before its weights load).
    """
    params = dict(tower_params or {})
    if init_from != "tower" and MODELS.accepts(tower, "init_from"):
        params["init_from"] = init_from
    return DualEncoder(build_model(tower, params), similarity, float(scale), learn_scale, tokens)
