"""Audio front end: wav I/O, band-limited resampling, log-mel features, SpecAugment, clip checks.

Everything is plain torch + NumPy + the standard library's ``wave``, so a speech student's input
pipeline needs no audio package and its feature extractor (``LogMel``, convolutions only) exports to
ONNX together with the model. Audio is handled as mono float32 in [-1, 1] at ``SAMPLE_RATE``.
"""

from __future__ import annotations

import functools
import math
import os
import wave
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossdistill._util.files import atomic_path
from crossdistill.errors import ConfigError, DataError, ShapeError

SAMPLE_RATE = 16_000

# A clip is "silent" below this overall RMS (-80 dBFS) ...
SILENT_RMS = 1e-4
# ... or when fewer than MIN_ACTIVE_S seconds of its 10 ms frames reach ACTIVE_RMS (-50 dBFS):
# flite's output for text it cannot speak is 0.2 s of low noise at about 6e-4 RMS.
ACTIVE_RMS = 10 ** (-50 / 20)
MIN_ACTIVE_S = 0.05
# "clipped" when more than CLIPPED_FRACTION of the samples sit at full scale.
CLIP_LEVEL = 0.999
CLIPPED_FRACTION = 0.01

# Past this many weights a polyphase bank (phases x taps) is too big to build; rates that reduce
# badly (e.g. 44_056 -> 16_000) are resampled by gathering taps per output sample instead.
MAX_POLYPHASE_WEIGHTS = 1 << 22

_WAV_HINT = "the file must be an uncompressed PCM .wav (8, 16, 24 or 32-bit); re-export it"


# ---------------------------------------------------------------------------------------------
# wav files


def _read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """``(frames, channels)`` float32 samples in [-1, 1] and the sample rate of a PCM wav."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"wav file not found: {path}",
            hint="check the path" if not path.exists() else "the path is not a regular file",
        )
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = (
                w.getnchannels(),
                w.getsampwidth(),
                w.getframerate(),
                w.getnframes(),
            )
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        # wave.Error covers "file does not start with RIFF id", non-PCM formats, bad fmt chunks.
        raise DataError(
            f"{path} is not a readable RIFF/WAVE PCM file ({e})", hint=_WAV_HINT
        ) from None
    except OSError as e:
        raise DataError(f"cannot read wav file {path}: {e.strerror or e}") from None
    if channels < 1:
        raise DataError(f"wav file {path} declares {channels} channels", hint=_WAV_HINT)
    if width not in (1, 2, 3, 4):
        raise DataError(f"wav file {path} has {8 * width}-bit samples", hint=_WAV_HINT)
    if rate < 1:
        raise DataError(f"wav file {path} declares a sample rate of {rate} Hz", hint=_WAV_HINT)
    frame_bytes = channels * width
    if len(raw) < frames * frame_bytes:
        raise DataError(
            f"wav file {path} is truncated: its header declares {frames} frames but it holds "
            f"{len(raw) // frame_bytes}",
            hint="regenerate or re-download the file",
        )

    if width == 1:  # 8-bit PCM is unsigned, centred on 128
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:  # no 24-bit dtype: place the 3 bytes in the top of an int32, shift back
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = ((b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)) >> 8
        x = v.astype(np.float32) / float(1 << 23)
    else:
        x = (np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    return x.reshape(-1, channels), rate


def read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] (channels averaged) and the sample rate of a PCM wav
    (8, 16, 24 or 32-bit, any channel count). Raises :class:`DataError` naming the file when it
    is missing, not RIFF/WAVE PCM, truncated, or declares no channels."""
    x, rate = _read_wav(path)
    return (x[:, 0].copy() if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)), rate


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> None:
    """Write mono ``samples`` (float, clipped to [-1, 1]) as a 16-bit PCM wav, atomically: a crash
    leaves either the old file or the complete new one, never a truncated wav."""
    path = Path(path)
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise ShapeError(f"write_wav: expected mono samples of shape (T,), got {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"write_wav: refusing to write non-finite samples to {path}")
    # The inverse of read_wav's / 32768, so a round trip moves a sample by at most half a step
    # (+1.0 itself becomes the largest code, 32767).
    pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())


# ---------------------------------------------------------------------------------------------
# resampling


def _sinc_kernel(
    t: torch.Tensor, cutoff: float, half_width: float, window: str, beta: float
) -> torch.Tensor:
    """Windowed-sinc low-pass taps at offsets ``t`` (in input samples); ``cutoff`` is the
    cut-off as a fraction of the input rate (0.5 = its Nyquist)."""
    h = 2 * cutoff * torch.sinc(2 * cutoff * t)
    u = (t / half_width).clamp(-1, 1)
    if window == "hann":
        w = torch.cos(0.5 * math.pi * u) ** 2
    else:  # kaiser
        w = torch.special.i0(beta * torch.sqrt(1 - u**2)) / torch.special.i0(
            torch.tensor(beta, dtype=t.dtype)
        )
    return torch.where(t.abs() <= half_width, h * w, torch.zeros_like(h))


@functools.lru_cache(maxsize=16)
def _polyphase_bank(
    up: int, down: int, zeros: int, rolloff: float, window: str, beta: float
) -> tuple[torch.Tensor, int]:
    """``(up, 1, taps)`` conv1d weights (one kernel per output phase) and the left padding."""
    cutoff = rolloff * min(up, down) / (2 * down)
    half_width = zeros / (2 * cutoff)
    pad = math.ceil(half_width)
    # Output sample up*j + p sits at input time j*down + p*down/up; its taps are the inputs
    # j*down + m for m in [-pad, pad + down), i.e. conv1d index i = m + pad, stride down.
    m = torch.arange(-pad, pad + down, dtype=torch.float64)
    phase = torch.arange(up, dtype=torch.float64)[:, None] * down / up
    bank = _sinc_kernel(phase - m, cutoff, half_width, window, beta)
    return bank[:, None, :], pad


def _check_resample_args(orig_sr: int, new_sr: int, zeros: int, rolloff: float, window: str):
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr < 1 or new_sr < 1:
        raise ConfigError(f"resample: rates must be positive integers, got {orig_sr} -> {new_sr}")
    if zeros < 1 or not 0 < rolloff <= 1:
        raise ConfigError(
            f"resample: need zeros >= 1 and 0 < rolloff <= 1, got {zeros} and {rolloff}"
        )
    if window not in ("hann", "kaiser"):
        raise ConfigError(f"resample: window must be 'hann' or 'kaiser', got {window!r}")


def resample(
    x: torch.Tensor,
    orig_sr: int,
    new_sr: int,
    zeros: int = 64,
    rolloff: float = 0.97,
    window: str = "kaiser",
    beta: float = 8.6,
) -> torch.Tensor:
    """Band-limited resampling of ``x`` along its last dimension from ``orig_sr`` to ``new_sr`` Hz.

    A windowed sinc (``window`` "hann" or "kaiser" with ``beta``, ``zeros`` zero crossings each
    side) low-passes at ``rolloff * min(orig_sr, new_sr) / 2``; the rates are reduced by their gcd
    and each output phase gets its own kernel, applied as one strided ``conv1d``. The first output
    sample sits at the first input sample; the output has ``ceil(T * new_sr / orig_sr)`` samples.
    Identity when the rates match.

    The defaults (Kaiser, 64 zero crossings, cut-off at 0.97 of the lower Nyquist) keep a
    22_050 -> 16_000 Hz conversion flat within 0.1 dB up to 7.5 kHz and push everything that
    would alias (above 8.2 kHz) below -90 dB; with 6 zero crossings an 8.5 kHz tone would fold
    back at only -15 dB. The taps cost little here: the kernel length is dominated by the
    ``orig_sr / gcd`` stride anyway.
    """
    _check_resample_args(orig_sr, new_sr, zeros, rolloff, window)
    if orig_sr == new_sr:
        return x
    g = math.gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // g, int(orig_sr) // g
    shape, length = x.shape[:-1], x.shape[-1]
    n_out = -(-length * up // down)
    if length == 0:
        return x.new_zeros((*shape, 0))
    flat = x.reshape(-1, 1, length)
    taps = 2 * math.ceil(zeros / (rolloff * min(up, down) / down)) + down
    if up * taps > MAX_POLYPHASE_WEIGHTS:
        y = _resample_gather(flat[:, 0], up, down, n_out, zeros, rolloff, window, beta)
        return y.reshape(*shape, n_out)
    bank, pad = _polyphase_bank(up, down, zeros, rolloff, window, beta)
    bank = bank.to(device=x.device, dtype=x.dtype)
    frames = -(-n_out // up)
    right = max(0, (frames - 1) * down + bank.shape[-1] - length - pad)
    y = F.conv1d(F.pad(flat, (pad, right)), bank, stride=down)[..., :frames]  # (N, up, frames)
    y = y.transpose(1, 2).reshape(flat.shape[0], frames * up)[:, :n_out]
    return y.reshape(*shape, n_out)


def _resample_gather(
    x: torch.Tensor,
    up: int,
    down: int,
    n_out: int,
    zeros: int,
    rolloff: float,
    window: str,
    beta: float,
) -> torch.Tensor:
    """The same filter as :func:`resample`, evaluated per output sample (``(N, T)`` input):
    for rate pairs whose polyphase bank would be huge."""
    cutoff = rolloff * min(up, down) / (2 * down)
    half_width = zeros / (2 * cutoff)
    pad = math.ceil(half_width) + 1
    n = torch.arange(n_out, dtype=torch.float64)
    t = n * down / up  # output times in input samples
    base = torch.floor(t).long()
    offsets = torch.arange(-pad, pad + 1)
    idx = base[:, None] + offsets  # (n_out, taps) input indices
    w = _sinc_kernel(t[:, None] - idx.double(), cutoff, half_width, window, beta)
    xp = F.pad(x, (pad, pad + 1))
    taps = xp[:, idx + pad]  # (N, n_out, taps)
    return (taps * w.to(device=x.device, dtype=x.dtype)).sum(-1)


# ---------------------------------------------------------------------------------------------
# features


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float
) -> np.ndarray:
    """``(n_mels, n_freqs)`` triangular HTK mel filters (peak 1, no area normalization) over the
    ``n_freqs`` bins of a real FFT spanning 0 .. ``sample_rate / 2``."""
    freqs = np.linspace(0.0, sample_rate / 2, n_freqs)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lo) / (mid - lo)
    falling = (hi - freqs) / (hi - mid)
    return np.maximum(0.0, np.minimum(rising, falling))


class LogMel(nn.Module):
    """Log-mel spectrogram: ``(B, T)`` waveforms → ``(B, n_mels, frames)`` (``(T,)`` →
    ``(n_mels, frames)``), ``frames = 1 + T // hop_length``.

    The STFT is a ``conv1d`` with fixed cosine/sine kernels times a periodic Hann window
    (``center=True``: reflect padding of ``n_fft // 2``), so the module exports to ONNX with the
    model; then the power spectrum, an HTK mel filterbank and ``log(mel + log_floor)``.
    """

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        log_floor: float = 1e-6,
    ) -> None:
        super().__init__()
        f_max = sample_rate / 2 if f_max is None else f_max
        if n_fft < 2 or hop_length < 1 or n_mels < 1 or log_floor <= 0:
            raise ConfigError(
                f"LogMel: need n_fft >= 2, hop_length >= 1, n_mels >= 1, log_floor > 0; got "
                f"{n_fft}, {hop_length}, {n_mels}, {log_floor}"
            )
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ConfigError(
                f"LogMel: need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}, got "
                f"f_min={f_min}, f_max={f_max}"
            )
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.n_mels, self.log_floor = n_mels, log_floor

        n_freqs = n_fft // 2 + 1
        fbank = mel_filterbank(n_freqs, n_mels, sample_rate, f_min, f_max)
        empty = np.flatnonzero(fbank.sum(axis=1) == 0)
        if empty.size:
            # An empty band would be a constant log(log_floor) feature: a silent waste of a channel.
            raise ConfigError(
                f"LogMel: {empty.size} of the {n_mels} mel bands (first: {int(empty[0])}) cover no "
                f"FFT bin at n_fft={n_fft}",
                hint="use fewer n_mels, a larger n_fft, or a higher f_min",
            )
        n = np.arange(n_fft)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
        angle = 2 * np.pi * np.outer(np.arange(n_freqs), n) / n_fft
        basis = np.concatenate([np.cos(angle), -np.sin(angle)]) * window  # (2F, n_fft)
        self.register_buffer(
            "basis", torch.tensor(basis, dtype=torch.float32)[:, None, :], persistent=False
        )
        self.register_buffer("fbank", torch.tensor(fbank, dtype=torch.float32), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        unbatched = waveform.dim() == 1
        x = waveform[None] if unbatched else waveform
        if x.dim() != 2:
            raise ShapeError(
                f"LogMel: expected (B, T) or (T,) waveforms, got {tuple(waveform.shape)}"
            )
        pad = self.n_fft // 2
        if x.shape[-1] <= pad:
            raise ShapeError(
                f"LogMel: a waveform of {x.shape[-1]} samples is too short for n_fft="
                f"{self.n_fft} (reflect padding needs more than {pad})"
            )
        x = F.pad(x[:, None, :], (pad, pad), mode="reflect")
        spec = F.conv1d(x, self.basis, stride=self.hop_length)  # (B, 2F, frames)
        re, im = spec.chunk(2, dim=1)
        mel = torch.matmul(self.fbank, re * re + im * im)  # (B, n_mels, frames)
        out = torch.log(mel + self.log_floor)
        return out[0] if unbatched else out

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
            f"n_mels={self.n_mels}"
        )


class SpecAugment(nn.Module):
    """SpecAugment's frequency and time masking (Park et al. 2019, arXiv:1904.08779) on
    ``(B, n_mels, frames)``: per example, ``freq_masks`` bands of ``0..freq_width`` mel channels
    and ``time_masks`` spans of ``0..time_width`` frames (widths and starts drawn uniformly) are set
    to that example's mean. Only in training mode; draws come from torch's global CPU generator,
    so a seeded run reproduces on any device. (Time warping is not implemented.)
    """

    def __init__(
        self, freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2, time_width: int = 10
    ) -> None:
        super().__init__()
        if min(freq_masks, freq_width, time_masks, time_width) < 0:
            raise ConfigError(
                "SpecAugment: mask counts and widths must be >= 0, got "
                f"{freq_masks}, {freq_width}, {time_masks}, {time_width}"
            )
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    @staticmethod
    def _masks(batch: int, size: int, count: int, width: int) -> torch.Tensor:
        """``(batch, size)`` bool: the union of ``count`` random spans per row."""
        if count == 0 or width == 0 or size == 0:
            return torch.zeros(batch, size, dtype=torch.bool)
        w = torch.randint(0, min(width, size) + 1, (batch, count))
        start = (torch.rand(batch, count) * (size - w + 1)).long()
        pos = torch.arange(size)[None, None, :]
        return ((pos >= start[..., None]) & (pos < (start + w)[..., None])).any(dim=1)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return spec
        if spec.dim() != 3:
            raise ShapeError(f"SpecAugment: expected (B, n_mels, frames), got {tuple(spec.shape)}")
        b, n_mels, frames = spec.shape
        freq = self._masks(b, n_mels, self.freq_masks, self.freq_width).to(spec.device)
        time = self._masks(b, frames, self.time_masks, self.time_width).to(spec.device)
        mask = freq[:, :, None] | time[:, None, :]
        mean = spec.mean(dim=(1, 2), keepdim=True)
        return torch.where(mask, mean, spec)

    def extra_repr(self) -> str:
        return (
            f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, "
            f"time_masks={self.time_masks}, time_width={self.time_width}"
        )


# ---------------------------------------------------------------------------------------------
# clips


def check_clip(samples: np.ndarray, sample_rate: int) -> list[str]:
    """Problems found in a mono clip: "empty", "non-finite", "silent" (RMS below ``SILENT_RMS``
    or under ``MIN_ACTIVE_S`` seconds of 10 ms frames at ``ACTIVE_RMS``), "clipped" (over
    ``CLIPPED_FRACTION`` of samples at ``|x| >= CLIP_LEVEL``). ``[]`` for a good clip."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return ["empty"]
    if not np.isfinite(x).all():
        return ["non-finite"]
    problems = []
    frame = max(1, sample_rate // 100)
    n = max(1, x.size // frame)
    rms = np.sqrt(np.mean(np.resize(x, n * frame).reshape(n, frame) ** 2, axis=1))
    active_s = np.count_nonzero(rms >= ACTIVE_RMS) * frame / sample_rate
    if np.sqrt(np.mean(x**2)) < SILENT_RMS or active_s < MIN_ACTIVE_S:
        problems.append("silent")
    if np.count_nonzero(np.abs(x) >= CLIP_LEVEL) > CLIPPED_FRACTION * x.size:
        problems.append("clipped")
    return problems


def load_clip(
    path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, list[str]]:
    """Mono float32 samples of the wav at ``path`` at ``sample_rate``, and notes on what was
    changed to get there ("downmixed 2 channels", "resampled from 22050 Hz"), so callers can
    report them."""
    x, rate = _read_wav(path)
    notes = []
    if x.shape[1] > 1:
        notes.append(f"downmixed {x.shape[1]} channels")
        mono = x.mean(axis=1, dtype=np.float32)
    else:
        mono = x[:, 0]
    if rate != sample_rate:
        notes.append(f"resampled from {rate} Hz")
        mono = resample(torch.from_numpy(np.ascontiguousarray(mono)), rate, sample_rate).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32), notes
