"""Audio front end: wav I/O, resampling against analytic sines, LogMel against a NumPy STFT,
SpecAugment, clip checks and errors that name the file."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from crossdistill.domains.speech import audio
from crossdistill.domains.speech.audio import (
    SAMPLE_RATE,
    LogMel,
    SpecAugment,
    check_clip,
    load_clip,
    read_wav,
    resample,
    write_wav,
)
from crossdistill.errors import ConfigError, DataError, ShapeError

# ------------------------------------------------------------------------------------ helpers


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)


def write_pcm(path: Path, frames: np.ndarray, sr: int, width: int) -> Path:
    """Write integer PCM ``frames`` of shape (T, channels) with the wave module."""
    frames = np.asarray(frames)
    if width == 1:
        raw = frames.astype(np.uint8).tobytes()
    elif width == 2:
        raw = frames.astype("<i2").tobytes()
    elif width == 3:
        v = frames.astype("<i4").reshape(-1)
        raw = b"".join(int(s).to_bytes(3, "little", signed=True) for s in v)
    else:
        raw = frames.astype("<i4").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(width)
        w.setframerate(sr)
        w.writeframes(raw)
    return path


def riff(fmt_tag: int, channels: int, sr: int, bits: int, data: bytes) -> bytes:
    """A hand-made RIFF/WAVE file (for formats the wave module refuses to write)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, sr, sr * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tone_db(y: torch.Tensor, amp: float = 0.5, edge: int = 2000) -> float:
    """Level of a resampled tone relative to its input amplitude, away from the edges."""
    rms = y[edge:-edge].double().pow(2).mean().sqrt().item()
    return 20 * math.log10(max(rms, 1e-30) / (amp / math.sqrt(2)))


# ----------------------------------------------------------------------------------- resample


@pytest.mark.parametrize(
    ("orig", "new", "freq"),
    [(22050, 16000, 440), (44100, 16000, 1000), (48000, 16000, 3000), (8000, 16000, 1000),
     (11025, 16000, 2500), (16000, 22050, 440)],
)  # fmt: skip
def test_resample_keeps_a_sine(orig: int, new: int, freq: float) -> None:
    x = torch.tensor(sine(freq, orig, 1.0), dtype=torch.float64)
    y = resample(x, orig, new)
    assert y.shape == (math.ceil(len(x) * new / orig),)
    expected = sine(freq, new, len(y) / new)[: len(y)]
    edge = new // 20  # the filter sees zeros past the ends
    err = np.abs(y.numpy()[edge:-edge] - expected[edge:-edge]).max()
    assert err < 1e-3, err


def test_resample_passband_and_stopband() -> None:
    sr, t = 22050, 1.0
    level = {f: tone_db(resample(torch.tensor(sine(f, sr, t)), sr, 16000)) for f in (7000, 7500)}
    assert all(abs(db) < 0.5 for db in level.values()), level  # under the new Nyquist: passes
    for f in (8500, 10000):  # above it: would alias to 7.5 / 6 kHz; must be removed
        y = resample(torch.tensor(sine(f, sr, t)), sr, 16000)
        energy_ratio = y[2000:-2000].pow(2).mean() / (0.5**2 / 2)
        assert energy_ratio < 1e-6, (f, float(energy_ratio))


@pytest.mark.parametrize("length", [0, 1, 2, 440, 441, 1000, 22050])
def test_resample_lengths_and_batch_dims(length: int) -> None:
    x = torch.randn(2, 3, length)
    for new in (16000, 8000, 44100):
        y = resample(x, 22050, new)
        assert y.shape == (2, 3, math.ceil(length * new / 22050))
        assert y.dtype == x.dtype
    if length:  # rows are resampled independently
        torch.testing.assert_close(resample(x, 22050, 16000)[1, 2], resample(x[1, 2], 22050, 16000))


def test_resample_identity_and_bad_args() -> None:
    x = torch.randn(100)
    assert resample(x, 16000, 16000) is x
    with pytest.raises(ConfigError, match="positive integers"):
        resample(x, 0, 16000)
    with pytest.raises(ConfigError, match="rolloff"):
        resample(x, 22050, 16000, rolloff=1.5)
    with pytest.raises(ConfigError, match="window"):
        resample(x, 22050, 16000, window="box")


@pytest.mark.parametrize("window", ["hann", "kaiser"])
def test_resample_gather_path_equals_polyphase(
    window: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.randn(2, 3000, dtype=torch.float64)
    conv = resample(x, 22050, 16000, zeros=6, window=window)
    monkeypatch.setattr(audio, "MAX_POLYPHASE_WEIGHTS", 0)  # force the per-sample path
    gather = resample(x, 22050, 16000, zeros=6, window=window)
    torch.testing.assert_close(gather, conv, rtol=0, atol=1e-12)
    # A rate pair that reduces badly still works (and keeps a sine).
    y = resample(torch.tensor(sine(440, 22051, 0.5)), 22051, 16000)
    ref = sine(440, 16000, len(y) / 16000)[: len(y)]
    assert np.abs(y.numpy()[800:-800] - ref[800:-800]).max() < 1e-3


# -------------------------------------------------------------------------------------- LogMel


def numpy_log_mel(
    x: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int, f_min: float, f_max: float
) -> np.ndarray:
    """Reference: framed rfft of the reflect-padded signal, triangles built one by one."""
    window = 0.5 * (1 - np.cos(2 * np.pi * np.arange(n_fft) / n_fft))
    padded = np.pad(x, n_fft // 2, mode="reflect")
    frames = 1 + (len(padded) - n_fft) // hop
    power = np.stack(
        [
            np.abs(np.fft.rfft(padded[i * hop : i * hop + n_fft] * window)) ** 2
            for i in range(frames)
        ],
        axis=1,
    )  # (n_fft // 2 + 1, frames)

    def mel(f):
        return 2595 * np.log10(1 + f / 700)

    points = np.linspace(mel(f_min), mel(f_max), n_mels + 2)
    hz = 700 * (10 ** (points / 2595) - 1)
    bins = np.arange(n_fft // 2 + 1) * sr / n_fft
    fb = np.zeros((n_mels, len(bins)))
    for m in range(n_mels):
        left, centre, right = hz[m], hz[m + 1], hz[m + 2]
        for k, f in enumerate(bins):
            if left < f <= centre:
                fb[m, k] = (f - left) / (centre - left)
            elif centre < f < right:
                fb[m, k] = (right - f) / (right - centre)
    return np.log(fb @ power + 1e-6)


@pytest.mark.parametrize(
    "kw",
    [{}, {"n_mels": 40, "f_min": 60.0, "f_max": 7600.0}, {"n_fft": 512, "hop_length": 128}],
    ids=["default", "band", "n_fft512"],
)
def test_log_mel_matches_numpy(kw: dict) -> None:
    rng = np.random.default_rng(0)
    x = 0.3 * rng.standard_normal((2, 4000)) + sine(440, SAMPLE_RATE, 0.25)
    module = LogMel(**kw)
    out = module(torch.tensor(x, dtype=torch.float32))
    p = {"n_fft": 400, "hop_length": 160, "n_mels": 64, "f_min": 0.0, "f_max": 8000.0, **kw}
    assert out.shape == (2, p["n_mels"], 1 + 4000 // p["hop_length"])
    for b in range(2):
        ref = numpy_log_mel(x[b], SAMPLE_RATE, p["n_fft"], p["hop_length"], p["n_mels"],
                            p["f_min"], p["f_max"])  # fmt: skip
        np.testing.assert_allclose(out[b].numpy(), ref, rtol=1e-4, atol=1e-4)


def test_log_mel_tone_peaks_in_its_band() -> None:
    module = LogMel()
    centres = audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(8000), 66))[1:-1]
    for freq in (300.0, 1000.0, 2500.0, 6000.0):
        spec = module(torch.tensor(sine(freq, SAMPLE_RATE, 0.5), dtype=torch.float32))
        assert spec.shape == (64, 1 + 8000 // 160)  # unbatched in, unbatched out
        peak = int(spec.mean(dim=1).argmax())
        assert abs(centres[peak] - freq) <= np.diff(centres)[max(peak - 1, 0)], (freq, peak)


def test_log_mel_gradcheck_and_buffers() -> None:
    module = LogMel(sample_rate=16000, n_fft=16, hop_length=4, n_mels=4).double()
    x = torch.randn(2, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))
    assert module.state_dict() == {}  # fixed kernels are not weights


def test_log_mel_errors() -> None:
    with pytest.raises(ShapeError, match="too short"):
        LogMel()(torch.zeros(1, 200))
    with pytest.raises(ShapeError, match=r"\(B, T\)"):
        LogMel()(torch.zeros(1, 2, 800))
    with pytest.raises(ConfigError, match="cover no FFT bin"):
        LogMel(n_mels=128, n_fft=400)
    with pytest.raises(ConfigError, match="f_max"):
        LogMel(f_max=9000)


def test_log_mel_exports_to_onnx(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    module = LogMel().eval()
    x = torch.randn(2, 8000)
    path = tmp_path / "logmel.onnx"
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("time", min=201)}
    torch.onnx.export(
        module,
        (x,),
        str(path),
        input_names=["wave"],
        output_names=["mel"],
        dynamic_shapes={"waveform": dims},
        dynamo=True,
    )
    session = ort.InferenceSession(str(path))
    y = torch.randn(3, 5000)
    (got,) = session.run(None, {"wave": y.numpy()})
    np.testing.assert_allclose(got, module(y).numpy(), rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------------- SpecAugment


def test_spec_augment_eval_is_identity() -> None:
    spec = torch.randn(4, 64, 100)
    aug = SpecAugment().eval()
    assert aug(spec) is spec


def test_spec_augment_masks_whole_bands_and_spans() -> None:
    torch.manual_seed(0)
    spec = torch.randn(8, 64, 100) + 5
    aug = SpecAugment(freq_masks=2, freq_width=8, time_masks=2, time_width=10).train()
    out = aug(spec)
    changed = out != spec
    assert changed.any()
    for b in range(8):
        mean = spec[b].mean()
        assert torch.allclose(out[b][changed[b]], mean.expand(int(changed[b].sum())))
        rows = changed[b].all(dim=1)  # masked mel bands
        cols = changed[b].all(dim=0)  # masked frames
        # every changed value lies in a fully masked band or frame span
        assert torch.equal(changed[b], rows[:, None] | cols[None, :])
        assert rows.sum() <= 16 and cols.sum() <= 20
    # masks differ between examples
    assert len({tuple(changed[b].all(dim=1).tolist()) for b in range(8)}) > 1


def test_spec_augment_reproducible() -> None:
    spec = torch.randn(4, 64, 100)
    aug = SpecAugment().train()
    torch.manual_seed(3)
    a = aug(spec)
    torch.manual_seed(3)
    b = aug(spec)
    torch.manual_seed(4)
    c = aug(spec)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(SpecAugment(0, 8, 0, 10).train()(spec), spec)
    with pytest.raises(ConfigError):
        SpecAugment(freq_width=-1)


# ----------------------------------------------------------------------------------- wav files


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2])
def test_read_wav_pcm_widths(tmp_path: Path, width: int, channels: int) -> None:
    bits = 8 * width
    full = 2 ** (bits - 1)
    rng = np.random.default_rng(width)
    ints = rng.integers(-full, full, size=(300, channels))
    ints[:2] = [[-full] * channels, [full - 1] * channels]  # the extremes
    stored = ints + 128 if width == 1 else ints  # 8-bit wavs are unsigned
    path = write_pcm(tmp_path / "x.wav", stored, 12000, width)
    x, sr = read_wav(path)
    assert sr == 12000 and x.dtype == np.float32 and x.shape == (300,)
    np.testing.assert_allclose(x, (ints / full).mean(axis=1), atol=1e-6)
    assert x.min() >= -1 and x.max() <= 1


def test_write_wav_round_trip_and_clipping(tmp_path: Path) -> None:
    x = sine(440, 16000, 0.1, amp=0.9)
    x[:10] = 1.5  # clipped to full scale
    path = tmp_path / "sub" / "out.wav"
    write_wav(path, x, 16000)
    assert [p.name for p in path.parent.iterdir()] == ["out.wav"]  # no temp file left
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
    y, sr = read_wav(path)
    assert sr == 16000
    np.testing.assert_allclose(y[10:], x[10:], atol=0.5 / 32768 + 1e-7)
    np.testing.assert_allclose(y[:10], 32767 / 32768)
    with pytest.raises(DataError, match="non-finite"):
        write_wav(path, np.array([0.0, np.nan]), 16000)
    with pytest.raises(ShapeError):
        write_wav(path, np.zeros((2, 10)), 16000)
    assert read_wav(path)[0].shape == y.shape  # a failed write leaves the old file


def test_load_clip_44k_stereo(tmp_path: Path) -> None:
    left, right = sine(1000, 44100, 0.5, 0.4), sine(1000, 44100, 0.5, 0.2)
    ints = np.round(np.stack([left, right], axis=1) * 32767)
    path = write_pcm(tmp_path / "stereo.wav", ints, 44100, 2)
    x, notes = load_clip(path)
    assert notes == ["downmixed 2 channels", "resampled from 44100 Hz"]
    assert x.dtype == np.float32 and x.shape == (8000,)
    ref = sine(1000, SAMPLE_RATE, 0.5, 0.3)
    assert np.abs(x[400:-400] - ref[400:-400]).max() < 2e-3
    mono = tmp_path / "mono.wav"
    write_wav(mono, ref, SAMPLE_RATE)
    y, notes = load_clip(mono)
    assert notes == [] and np.abs(y - ref).max() < 1e-4


def test_check_clip() -> None:
    sr = 16000
    assert check_clip(sine(300, sr, 1.0), sr) == []
    assert check_clip(np.zeros(0), sr) == ["empty"]
    assert check_clip(np.zeros(sr), sr) == ["silent"]
    assert check_clip(1e-5 * np.random.default_rng(0).standard_normal(sr), sr) == ["silent"]
    burst = np.zeros(sr)
    burst[:320] = sine(300, sr, 0.02)  # 20 ms of sound is not a spoken clip
    assert check_clip(burst, sr) == ["silent"]
    burst[: sr // 10] = sine(300, sr, 0.1)
    assert check_clip(burst, sr) == []
    assert check_clip(np.clip(3 * sine(300, sr, 1.0), -1, 1), sr) == ["clipped"]
    assert check_clip(np.array([0.1, np.nan]), sr) == ["non-finite"]


def test_bad_wav_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as e:
        read_wav(tmp_path / "missing.wav")
    assert "missing.wav" in str(e.value)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not a wav file at all" * 10)
    with pytest.raises(DataError, match="RIFF/WAVE") as e:
        read_wav(garbage)
    assert "garbage.wav" in str(e.value) and "hint" in str(e.value)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.wav"):
        load_clip(empty)
    floats = tmp_path / "float.wav"  # IEEE float (format 3), not PCM
    floats.write_bytes(riff(3, 1, 16000, 32, np.zeros(100, "<f4").tobytes()))
    with pytest.raises(DataError, match=r"float\.wav"):
        read_wav(floats)
    no_channels = tmp_path / "zero.wav"
    no_channels.write_bytes(riff(1, 0, 16000, 16, b""))
    with pytest.raises(DataError, match=r"zero\.wav"):
        read_wav(no_channels)
    good = write_wav(tmp_path / "good.wav", sine(300, 16000, 0.1), 16000)
    assert good is None
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes((tmp_path / "good.wav").read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_wav(truncated)
    with pytest.raises(DataError, match="not found"):
        read_wav(tmp_path)  # a folder
