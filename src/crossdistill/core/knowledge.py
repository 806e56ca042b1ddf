"""Knowledge: the named tensors a model emits.

Teacher and student both produce a :class:`Knowledge`; losses read from it by name and never know
whether it came from an online teacher or from a knowledge store. Standard names:

- ``logits`` — class scores ``(B, C)``
- ``embedding`` — a pooled vector ``(B, D)``
- ``scores`` — relevance scores, e.g. of a cross-encoder ``(B,)`` or ``(B, K)``
- ``features/<tap>`` — a tapped intermediate tensor
- ``attention/<tap>`` — tapped attention probabilities ``(B, heads, N, N)``
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from crossdistill.errors import KnowledgeError

LOGITS = "logits"
EMBEDDING = "embedding"
SCORES = "scores"
TEXT_EMBEDDING = "text_embedding"  # a two-tower student's second (text) tower


def feature_key(tap: str) -> str:
    """The Knowledge key of a tapped feature."""
    return f"features/{tap}"


def attention_key(tap: str) -> str:
    """The Knowledge key of tapped attention probabilities."""
    return f"attention/{tap}"


class Knowledge(dict[str, torch.Tensor]):
    """A ``dict`` of named tensors with helpers for checking and moving them.

    ``source`` names who produced it ("teacher", "student", a store path) for error messages.
    """

    def __init__(
        self, items: Mapping[str, torch.Tensor] | None = None, *, source: str = "model"
    ) -> None:
        super().__init__(items or {})
        self.source = source

    def require(self, keys: Iterable[str], who: str) -> None:
        """Raise a :class:`KnowledgeError` naming ``who`` needs which missing keys."""
        missing = [k for k in keys if k not in self]
        if missing:
            raise KnowledgeError(
                f"{who} needs {', '.join(repr(k) for k in missing)} from the {self.source}, "
                f"which produced only {sorted(self) or 'nothing'}",
                hint=_hint_for(missing),
            )

    def detach(self) -> Knowledge:
        return Knowledge({k: v.detach() for k, v in self.items()}, source=self.source)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Knowledge:
        return Knowledge(
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.items()},
            source=self.source,
        )


def _hint_for(missing: list[str]) -> str:
    if any(k.startswith(("features/", "attention/")) for k in missing):
        return "add a tap with that name to the model's `taps:` list in the recipe"
    return (
        "set the model's `outputs:` in the recipe to name what its forward returns "
        "(e.g. outputs: [logits] or [embedding])"
    )
