"""A static-embedding text student: the mean of learned token vectors, then a projection.

Like model2vec, it has no attention and no position: a sentence is the mean of the embeddings of
its (non-special) tokens, which makes encoding a table lookup. It tokenizes raw strings itself
with a fast ``tokenizers.Tokenizer`` (by default MiniLM's WordPiece tokenizer), so it takes the
same batches as a sentence-encoder teacher. Its state dict holds only the two weight tensors.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossdistill.errors import ConfigError, DataError
from crossdistill.models.registry import MODELS


def load_tokenizer(tokenizer: str) -> Any:
    """``"minilm"`` (MiniLM's tokenizer.json) or the path of a ``tokenizer.json``."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError(
            "static_embedding needs the 'tokenizers' package, which is not installed",
            hint="pip install tokenizers  (or: pip install 'crossdistill[text]')",
        ) from None
    if tokenizer == "minilm":
        from crossdistill.models.hub.minilm import minilm_tokenizer_path

        path = minilm_tokenizer_path()
    else:
        path = Path(tokenizer)
        if not path.is_file():
            raise ConfigError(
                f"static_embedding: tokenizer {tokenizer!r} is neither 'minilm' nor a file",
                hint="give 'minilm' or the path of a Hugging Face tokenizer.json",
            )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exceptions
        raise DataError(
            f"{path} is not a readable tokenizer.json ({exc})",
            hint="give the tokenizer.json of a Hugging Face fast tokenizer",
        ) from None


class StaticEmbedding(nn.Module):
    """``forward(texts: list[str]) -> (B, out_dim)`` (``(B, dim)`` when ``out_dim`` is None).

    Texts are cut to ``max_length`` tokens; special tokens ([CLS], [UNK], ...) are dropped, and a
    text with no tokens left (e.g. ``""``) embeds as the zero vector before the projection.
    """

    def __init__(
        self,
        tokenizer: str = "minilm",
        dim: int = 256,
        out_dim: int | None = 384,
        max_length: int = 128,
    ) -> None:
        super().__init__()
        if dim < 1 or (out_dim is not None and out_dim < 1) or max_length < 1:
            raise ConfigError(
                "static_embedding: dim, out_dim and max_length must be positive, got"
                f" dim={dim}, out_dim={out_dim}, max_length={max_length}"
            )
        tok = load_tokenizer(tokenizer)
        tok.no_padding()
        tok.enable_truncation(int(max_length))
        self.tokenizer = tok
        self.tokenizer_name = tokenizer
        self.max_length = int(max_length)
        special = [i for i, t in tok.get_added_tokens_decoder().items() if t.special]
        self._special = np.array(sorted(special), dtype=np.int64)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        self.embedding = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.proj: nn.Module = nn.Linear(dim, out_dim) if out_dim is not None else nn.Identity()
        self.out_dim = out_dim if out_dim is not None else dim

    def token_bags(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat non-special token ids of all texts and the offset where each text's bag starts."""
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
        keep = ~np.isin(ids, self._special)
        bag = np.repeat(np.arange(len(encodings)), lengths)[keep]
        counts = np.bincount(bag, minlength=len(encodings))
        offsets = (np.cumsum(counts) - counts).astype(np.int64)
        return torch.from_numpy(ids[keep]), torch.from_numpy(offsets)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        ids, offsets = self.token_bags(texts)
        weight = self.embedding.weight
        if len(offsets) == 0:
            return self.proj(weight.new_zeros(0, weight.shape[1]))
        pooled = self.embedding(ids.to(weight.device), offsets.to(weight.device))
        return self.proj(pooled)

    def extra_repr(self) -> str:
        return f"tokenizer={self.tokenizer_name!r}, max_length={self.max_length}"


MODELS.register("static_embedding")(StaticEmbedding)
