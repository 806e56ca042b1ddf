"""The audio_files source: your own (text, wav) pairs, odd wavs converted and reported."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from crossdistill.data.sources import load_source
from crossdistill.errors import ConfigError, DataError


def _wav(path: Path, x: np.ndarray, rate: int = 16000, channels: int = 1) -> str:
    data = np.repeat(x[:, None], channels, axis=1) if channels > 1 else x[:, None]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(data, -1, 32767 / 32768) * 32768).astype("<i2").tobytes())
    return path.name


def _tone(seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * 220 * t)


@pytest.fixture()
def pairs(tmp_path: Path) -> Path:
    lines = [
        {
            "text": "good dog",
            "audio": _wav(tmp_path / "a.wav", _tone(0.5, 16000)),
            "label": "animal",
        },
        {
            "text": "stereo cat",
            "audio": _wav(tmp_path / "b.wav", _tone(0.5, 44100), 44100, 2),
            "label": "animal",
        },
        {"text": "quiet", "audio": _wav(tmp_path / "c.wav", np.zeros(8000)), "label": "other"},
        {
            "text": "loud",
            "audio": _wav(tmp_path / "d.wav", _tone(0.5, 16000, 2.0)),
            "label": "other",
        },
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_odd_wavs_are_converted_bad_ones_reported_and_left_out(pairs: Path) -> None:
    with pytest.warns(UserWarning) as caught:
        split = load_source("audio_files", "train", path=str(pairs), test_fraction=0.0)
    messages = " ".join(str(w.message) for w in caught)
    assert "downmixed 2 channels, resampled from 44100 Hz" in messages
    assert "left out (nothing to hear): line 3 (c.wav): silent" in messages
    assert "clipped (kept): line 4 (d.wav)" in messages
    assert split.texts == ["good dog", "stereo cat", "loud"]
    clips = split.modalities["speech"]
    assert clips.sample_rate == 16000 and abs(clips.length(1) - 8000) <= 1
    assert split.class_names == ["animal", "other"] and split.targets.tolist() == [0, 0, 1]


def test_groups_never_straddle_the_splits(tmp_path: Path) -> None:
    lines = [
        {
            "text": f"word {i}",
            "audio": _wav(tmp_path / f"{i}.wav", _tone(0.3, 16000)),
            "group": f"spk{i % 4}",
        }
        for i in range(16)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    train = load_source("audio_files", "train", path=str(path), test_fraction=0.5)
    test = load_source("audio_files", "test", path=str(path), test_fraction=0.5)
    assert len(train) + len(test) == 16
    speaker = {f"word {i}": i % 4 for i in range(16)}
    assert not {speaker[t] for t in train.texts} & {speaker[t] for t in test.texts}


def test_bad_pairs_files_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"text": "x", "audio": "missing.wav"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:1: audio file .*missing.wav does not exist"):
        load_source("audio_files", "train", path=str(path))
    path.write_text('{"audio": "a.wav"}\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: not a pairs line"):
        load_source("audio_files", "train", path=str(path))
    with pytest.raises(DataError, match="does not exist"):
        load_source("audio_files", "train", path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ConfigError, match="test_fraction"):
        load_source("audio_files", "train", path=str(path), test_fraction=1.0)


def test_a_corrupt_wav_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.wav").write_bytes(b"RIFF....not a wav")
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"text": "x", "audio": "bad.wav"}\n')
    with pytest.raises(DataError, match=r"bad\.wav"):
        load_source("audio_files", "train", path=str(path), test_fraction=0.0)
