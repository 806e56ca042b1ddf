"""A small frame-level voice-activity student: raw 16 kHz audio in, one logit per 32 ms out.

Built by name from a recipe or from Python: ``crossdistill.build_model("nets:vad_cnn", {...})``
(with this folder importable: run from it, or put it on ``PYTHONPATH``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.domains.speech.audio import LogMel

FRAME = 512  # samples per output frame (32 ms at 16 kHz): the teacher's chunk
HOP = 128  # log-mel hop (8 ms): four mel frames per output frame


class _Block(nn.Module):
    """A residual dilated convolution over time: context grows without losing frame rate."""

    def __init__(self, width: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            width, width, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False
        )
        self.norm = nn.BatchNorm1d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.norm(self.conv(x)))


class VADStudent(nn.Module):
    """``(B, T)`` waveforms → ``(B, F, 1)`` speech logits, ``F = ceil(T / 512)``.

    The log-mel front end is inside the model, so the exported student takes raw audio. Frame
    ``f`` is scored from the mel frames of samples ``512 f .. 512 (f + 1)`` and the context the
    dilated blocks see around them; the signal is zero-padded to whole frames as the teacher
    pads its last chunk, so the two emit the same number of frames for any length.
    """

    def __init__(
        self,
        n_mels: int = 32,
        width: int = 32,
        kernel: int = 5,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
        n_fft: int = 256,
    ) -> None:
        super().__init__()
        # a 16 ms window (silero's own STFT size): the front end is most of the student's cost
        self.frontend = LogMel(n_fft=n_fft, hop_length=HOP, n_mels=n_mels)
        self.norm = nn.BatchNorm1d(n_mels)
        # stride 4 turns the four 8 ms mel frames of each 32 ms frame into one step
        self.down = nn.Conv1d(n_mels, width, FRAME // HOP, stride=FRAME // HOP, bias=False)
        self.down_norm = nn.BatchNorm1d(width)
        self.blocks = nn.Sequential(*(_Block(width, kernel, d) for d in dilations))
        self.head = nn.Conv1d(width, 1, 1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        frames = -(-wave.shape[-1] // FRAME)
        wave = F.pad(wave, (0, frames * FRAME - wave.shape[-1]))
        # LogMel centres frame j on sample 128 j: frames 1..4F put frame f's four mel frames
        # at samples 512 f + 128 .. 512 f + 512, inside the teacher's chunk and its edge
        mel = self.frontend(wave)[..., 1 : 1 + frames * (FRAME // HOP)]
        x = F.relu(self.down_norm(self.down(self.norm(mel))))
        return self.head(self.blocks(x)).transpose(1, 2)  # (B, F, 1)


def vad_cnn(
    n_mels: int = 32,
    width: int = 32,
    kernel: int = 5,
    dilations: list[int] | None = None,
    n_fft: int = 256,
) -> VADStudent:
    """The student, for ``crossdistill.build_model("nets:vad_cnn", params)`` and recipes."""
    return VADStudent(n_mels, width, kernel, tuple(dilations or (1, 2, 4, 8)), n_fft)
