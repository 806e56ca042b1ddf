"""Two small towers trained together: a speech tower and a text tower in one embedding space.

The whole retrieval system is then small: spoken queries go through the speech tower, the text
side through the text tower, and neither needs the (large) teacher. Trained from a text teacher,
both towers learn to land on the teacher's embedding of the same text; trained without one,
they learn the shared space from the pairs alone (``tower_infonce``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from crossdistill.errors import DataError
from crossdistill.models.registry import MODELS, build_model


@MODELS.register("speech_text_towers")
class SpeechTextTowers(nn.Module):
    """``forward({"speech": (B, T), "text": [str]}) -> {"embedding", "text_embedding"}``.

    ``embedding`` is the speech tower's ``(B, D)``, ``text_embedding`` the text tower's; both
    towers must emit the same width ``D``. ``speech`` / ``text`` name registered models (by
    default ``speech_encoder`` and ``static_embedding``) built with ``speech_params`` /
    ``text_params``.
    """

    def __init__(
        self,
        speech: str = "speech_encoder",
        speech_params: dict[str, Any] | None = None,
        text: str = "static_embedding",
        text_params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.speech = build_model(speech, speech_params or {})
        self.text = build_model(text, text_params or {})

    def forward(self, view: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if not isinstance(view, Mapping) or not {"speech", "text"} <= set(view):
            raise DataError(
                "speech_text_towers takes views {'speech': waveforms, 'text': [str]}, got "
                f"{type(view).__name__}",
                hint="give the data source `student: [text, speech]`",
            )
        return {"embedding": self.speech(view["speech"]), "text_embedding": self.text(view["text"])}
