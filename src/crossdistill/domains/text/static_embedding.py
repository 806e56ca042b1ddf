"""A static-embedding text student: the mean of learned token vectors, then a projection.

Like model2vec, it has no attention and no position: a sentence is the mean of the embeddings of
its tokens, which makes encoding a table lookup. It tokenizes raw strings itself with a fast
``tokenizers.Tokenizer`` (by default MiniLM's WordPiece tokenizer, or one trained on the corpus
with :mod:`crossdistill.domains.text.tokenizers`), exactly as sentence-transformers'
``StaticEmbedding`` does, so an exported student embeds the same. The table can start from a
teacher the model2vec way (:mod:`crossdistill.domains.text.init_static`). Its state dict holds
only the weight tensors.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossdistill._util.deferred import defer
from crossdistill.domains.text.init_static import DEFAULT_SIF, init_from_teacher
from crossdistill.errors import TEXT_EXTRA, ConfigError, DataError, require
from crossdistill.models.hub.minilm import minilm_tokenizer_path
from crossdistill.models.registry import MODELS


def load_tokenizer(tokenizer: str) -> Any:
    """``"minilm"`` (MiniLM's tokenizer.json) or the path of a ``tokenizer.json``."""
    tokenizers = require("tokenizers", "a text student", f"pip install tokenizers  {TEXT_EXTRA}")
    if tokenizer == "minilm":
        path = minilm_tokenizer_path()
    else:
        path = Path(tokenizer)
        if not path.is_file():
            raise ConfigError(
                f"static_embedding: tokenizer {tokenizer!r} is neither 'minilm' nor a file",
                hint="give 'minilm' or the path of a Hugging Face tokenizer.json",
            )
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exceptions
        raise DataError(
            f"{path} is not a readable tokenizer.json ({exc})",
            hint="give the tokenizer.json of a Hugging Face fast tokenizer",
        ) from None


@MODELS.register("static_embedding")
class StaticEmbedding(nn.Module):
    """``forward(texts: list[str]) -> (B, out_dim)`` (``(B, dim)`` when ``out_dim`` is None).

    Tokenization is sentence-transformers 6's ``StaticEmbedding.preprocess``: no special tokens
    added, none removed (an ``[UNK]`` counts like any token), truncation at ``max_length`` tokens
    by the tokenizer itself; a text with no tokens (``""``) embeds as the zero vector before the
    projection.

    With ``init_from`` (a registered text model, e.g. ``"minilm"``) the table starts as in
    model2vec (Tulkens & van Dongen, 2024): each token's surface string embedded by that model,
    PCA to ``dim`` (``init_pca``), rows scaled by Zipf/SIF weights (``sif_coefficient``, None
    for none); ``init_params`` are that model's params. With ``out_dim`` set (it must then be the
    teacher's width) the projection starts as the PCA's inverse, so the student starts close to
    the teacher. The result is cached under ``$CROSSDISTILL_CACHE`` (default
    ``~/.cache/crossdistill``). Built by ``crossdistill run``, the table is computed only after
    every check of the recipe has passed (``crossdistill._util.deferred``), and
    ``crossdistill cache`` never computes it.
    """

    def __init__(
        self,
        tokenizer: str = "minilm",
        dim: int = 256,
        out_dim: int | None = 384,
        max_length: int = 128,
        init_from: str | None = None,
        init_params: dict[str, Any] | None = None,
        sif_coefficient: float | None = DEFAULT_SIF,
        init_pca: bool = True,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if dim < 1 or (out_dim is not None and out_dim < 1) or max_length < 1:
            raise ConfigError(
                "static_embedding: dim, out_dim and max_length must be positive, got"
                f" dim={dim}, out_dim={out_dim}, max_length={max_length}"
            )
        tok = load_tokenizer(tokenizer)
        tok.no_padding()
        # kept in the tokenizer (and so in an exported tokenizer.json), as sentence-transformers
        # truncates only through the tokenizer's own setting
        tok.enable_truncation(int(max_length))
        self.tokenizer = tok
        self.tokenizer_name = tokenizer
        self.max_length = int(max_length)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        self.embedding = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.proj: nn.Module = nn.Linear(dim, out_dim) if out_dim is not None else nn.Identity()
        self.out_dim = out_dim if out_dim is not None else dim
        self.init_from = init_from
        if init_from is not None:
            # a teacher pass over the vocabulary: `run` does it once the recipe's checks passed
            init = functools.partial(
                self._init_from_teacher, init_from, init_params, sif_coefficient, init_pca, progress
            )
            defer(init)

    @torch.no_grad()
    def _init_from_teacher(
        self,
        teacher: str,
        params: dict[str, Any] | None,
        sif_coefficient: float | None,
        use_pca: bool,
        progress: bool,
    ) -> None:
        dim = self.embedding.embedding_dim
        init = init_from_teacher(
            self.tokenizer, teacher, dim, sif_coefficient, use_pca, params, progress=progress
        )
        if isinstance(self.proj, nn.Linear) and self.proj.out_features != init.teacher_dim:
            raise ConfigError(
                f"static_embedding: out_dim={self.proj.out_features} but init_from={teacher!r}"
                f" gives {init.teacher_dim}-d vectors; the projection starts as the map back to"
                " the teacher's space, so they must match",
                hint=f"set out_dim: {init.teacher_dim}, or out_dim: null (no projection)",
            )
        self.embedding.weight.copy_(init.table)
        if isinstance(self.proj, nn.Linear):
            self.proj.weight.copy_(init.components.T)
            self.proj.bias.copy_(init.mean)

    def token_bags(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat token ids of all texts and the offset where each text's bag starts."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise DataError(
                f"static_embedding takes a list of strings, got {type(texts).__name__}",
                hint="a text batch's view is a list of str; wrap a single sentence in a list",
            )
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        ids = np.fromiter(
            itertools.chain.from_iterable(e.ids for e in encodings), np.int64, int(lengths.sum())
        )
        offsets = (np.cumsum(lengths) - lengths).astype(np.int64)
        return torch.from_numpy(ids), torch.from_numpy(offsets)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        ids, offsets = self.token_bags(texts)
        weight = self.embedding.weight
        if len(offsets) == 0:
            return self.proj(weight.new_zeros(0, weight.shape[1]))
        pooled = self.embedding(ids.to(weight.device), offsets.to(weight.device))
        return self.proj(pooled)

    def extra_repr(self) -> str:
        init = "" if self.init_from is None else f", init_from={self.init_from!r}"
        return f"tokenizer={self.tokenizer_name!r}, max_length={self.max_length}{init}"
