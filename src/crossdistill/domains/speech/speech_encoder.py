"""A small speech encoder: 16 kHz waveform -> log-mel -> convolutions (+ attention) -> one vector.

The student of cross-modal distillation from a text teacher: it hears a clip and lands in the
teacher's text-embedding space. The front end
(:class:`~crossdistill.domains.speech.audio.LogMel`, and SpecAugment while training) is part of
the model, so the exported student takes raw 16 kHz waveforms. Padding (the zeros after a short
clip) is left out of the pooling: frames with no signal carry no weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.domains.speech.audio import LogMel, SpecAugment
from crossdistill.errors import ConfigError, DataError
from crossdistill.models.registry import MODELS


@MODELS.register("speech_encoder")
class SpeechEncoder(nn.Module):
    """``forward(waveforms (B, T) at 16 kHz) -> (B, out_dim)``.

    Log-mel (``n_mels`` bands, 10 ms hop) -> with ``cmvn``, each band's mean over the clip's
    frames with signal subtracted (cepstral mean normalisation: a voice's or a microphone's
    spectral tilt is a constant per band), padding set to 0 -> per-band BatchNorm -> strided
    1-D convolutions (``channels``, each halving the frame rate) -> ``attention_layers``
    pre-norm transformer layers over the remaining frames -> mean over frames that hold
    signal -> linear to ``out_dim``. About 1.6M parameters with the defaults.
    """

    def __init__(
        self,
        n_mels: int = 64,
        channels: Sequence[int] = (128, 192, 256),
        kernel_size: int = 5,
        attention_layers: int = 2,
        heads: int = 4,
        out_dim: int = 384,
        dropout: float = 0.1,
        spec_augment: bool | dict[str, Any] = True,
        cmvn: bool = True,
    ) -> None:
        super().__init__()
        if not channels or min(channels) < 1 or out_dim < 1 or n_mels < 1:
            raise ConfigError(
                f"speech_encoder: channels, n_mels and out_dim must be positive, got "
                f"channels={list(channels)}, n_mels={n_mels}, out_dim={out_dim}"
            )
        if attention_layers and channels[-1] % heads:
            raise ConfigError(
                f"speech_encoder: the last channel count {channels[-1]} must divide into "
                f"{heads} attention heads"
            )
        self.frontend = LogMel(n_mels=n_mels)
        self.cmvn = cmvn
        augment = spec_augment if isinstance(spec_augment, dict) else {}
        self.augment: nn.Module = SpecAugment(**augment) if spec_augment else nn.Identity()
        self.norm = nn.BatchNorm1d(n_mels)
        blocks: list[nn.Module] = []
        width = n_mels
        for c in channels:
            blocks += [
                nn.Conv1d(width, c, kernel_size, stride=2, padding=kernel_size // 2),
                nn.BatchNorm1d(c),
                nn.GELU(),
            ]
            width = c
        self.convs = nn.Sequential(*blocks)
        self.strides = len(channels)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                heads,
                2 * width,
                dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(attention_layers)
        )
        self.head = nn.Linear(width, out_dim)
        self.out_dim = out_dim

    def frame_mask(self, waveforms: torch.Tensor, frames: int, hop: int) -> torch.Tensor:
        """``(B, frames)``: True where a frame of ``hop`` samples covers a non-zero sample."""
        signal = (waveforms != 0).float().unsqueeze(1)
        mask = F.max_pool1d(signal, hop, hop, ceil_mode=True).squeeze(1) > 0
        mask = F.pad(mask, (0, max(0, frames - mask.shape[1])))[:, :frames]
        mask[:, 0] |= ~mask.any(dim=1)  # an all-silent clip still pools its first frame
        return mask

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        if not isinstance(waveforms, torch.Tensor) or waveforms.dim() != 2:
            raise DataError(
                f"speech_encoder takes (B, T) waveforms, got "
                f"{type(waveforms).__name__} {tuple(getattr(waveforms, 'shape', ()))}",
                hint="the student view of a speech source is a batch of 16 kHz waveforms",
            )
        x = self.frontend(waveforms)  # (B, n_mels, frames)
        if self.cmvn:  # per clip and band, over the frames with signal: voices and levels differ
            heard = self.frame_mask(waveforms, x.shape[-1], self.frontend.hop_length)
            weights = heard.unsqueeze(1).to(x.dtype)
            mean = (x * weights).sum(-1, keepdim=True) / weights.sum(-1, keepdim=True)
            x = (x - mean) * weights
        x = self.augment(x)
        x = self.convs(self.norm(x)).transpose(1, 2)  # (B, F, C)
        mask = self.frame_mask(waveforms, x.shape[1], self.frontend.hop_length * 2**self.strides)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1)
        return self.head(pooled)
