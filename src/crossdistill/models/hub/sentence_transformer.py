"""Any sentence-transformers model saved in a local directory, as a text teacher (or student).

``sentence_transformer(path=DIR)`` loads ``DIR`` offline, without remote code, and wraps it in the
same :class:`~crossdistill.models.hub.minilm.SentenceEncoder` as the MiniLM teacher: the module
takes a batch of raw strings, tokenizes them with the model's own tokenizer (the teacher's input
pipeline) and returns one embedding per string. Its inner transformer is reachable by taps, so
token-level hidden states and attention distributions are Knowledge too::

    teacher:
      model: sentence_transformer
      params: {path: /models/my-encoder, max_length: 128, eager_attention: true}
      outputs: [embedding]
      taps:
        - {name: h5, path: model.0.model.encoder.layer.5}   # (B, L, D) hidden states
        - {name: a5, path: model.0.model.encoder.layer.5.attention.self, select: 1,
           kind: attention}                           # (B, heads, L, L), eager attention

Token-level taps are padded to the longest text of the batch with the teacher's tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from crossdistill.errors import TEXT_EXTRA, ConfigError, require
from crossdistill.models.hub.minilm import encoder
from crossdistill.models.registry import MODELS

INSTALL_HINT = f"pip install sentence-transformers  {TEXT_EXTRA}"


def load_sentence_transformer(path: str | Path, device: str = "cpu") -> nn.Module:
    """``SentenceTransformer(path)`` from local files only, never trusting remote code."""
    path = Path(path)
    if not (path / "modules.json").is_file():
        raise ConfigError(
            f"{path} is not a sentence-transformers model directory (no modules.json)",
            hint="give the folder that SentenceTransformer.save() or "
            "`crossdistill export --format sentence-transformers` wrote",
        )
    st = require("sentence_transformers", "a sentence-transformers model", INSTALL_HINT)
    try:
        return st.SentenceTransformer(
            str(path), device=device, local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # a broken directory raises anything from OSError to KeyError
        raise ConfigError(
            f"cannot load the sentence-transformers model in {path}: {exc}",
            hint="check that the directory is complete (modules.json, config, weights, "
            "tokenizer files)",
        ) from None


@MODELS.register("sentence_transformer")
def sentence_transformer(
    path: str,
    device: str = "cpu",
    max_length: int = 128,
    normalize: bool = True,
    eager_attention: bool = False,
) -> nn.Module:
    """A local sentence-transformers model: ``list[str] -> (B, D)`` embeddings.

    Texts longer than ``max_length`` tokens are truncated; with ``normalize`` the embeddings have
    unit L2 norm; ``eager_attention`` lets taps read its attention distributions.
    """

    return encoder(load_sentence_transformer(path, device), max_length, normalize, eager_attention)
