"""Synthetic speech: voices, synthesize() with espeak-ng and flite, errors with their reason,
and generate()'s manifest, resume and failure records."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from crossdistill.domains.speech import tts
from crossdistill.domains.speech.audio import SAMPLE_RATE, read_wav
from crossdistill.domains.speech.tts import (
    INSTALL_HINT,
    SpeechError,
    Voice,
    clip_id,
    clip_path,
    default_voices,
    generate,
    read_manifest,
    require_engine,
    synthesize,
)
from crossdistill.errors import ConfigError, DataError

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (" + INSTALL_HINT + ")"
)
needs_flite = pytest.mark.skipif(
    shutil.which("flite") is None, reason="flite is not installed (" + INSTALL_HINT + ")"
)

ESPEAK = Voice("espeak-ng", "en-us+f3")
SLT = Voice("flite", "slt")


def test_voice_key_and_validation() -> None:
    assert ESPEAK.key == "espeak-ng:en-us+f3:r160:p50"
    assert Voice("flite", "slt", rate=200).key == "flite:slt:r200:p50"
    for voice in (ESPEAK, Voice("espeak-ng", "en-gb", 120, 70), SLT):
        assert Voice.from_key(voice.key) == voice
    with pytest.raises(ConfigError, match="unknown engine"):
        Voice("espeak", "en-us")
    with pytest.raises(ConfigError, match="no pitch control"):
        Voice("flite", "slt", pitch=60)
    with pytest.raises(ConfigError, match="rate"):
        Voice("espeak-ng", "en-us", rate=10)
    with pytest.raises(ConfigError, match="voice name"):
        Voice("espeak-ng", "--help")
    with pytest.raises(ConfigError, match="voice key"):
        Voice.from_key("espeak-ng:en-us")


def test_default_voices_are_varied() -> None:
    voices = default_voices()
    assert len(voices) >= 12
    assert len({v.key for v in voices}) == len(voices)
    assert {v.engine for v in voices} == {"espeak-ng", "flite"}
    assert {v.name for v in voices if v.engine == "flite"} == {"kal", "kal16", "awb", "rms", "slt"}
    assert len({v.name.split("+")[0] for v in voices if v.engine == "espeak-ng"}) >= 7


@needs_espeak
@needs_flite
def test_every_default_voice_speaks() -> None:
    for voice in default_voices():
        samples, notes = synthesize("Seven green apples.", voice)
        assert samples.dtype == np.float32 and samples.ndim == 1, voice.key
        assert 0.4 < samples.size / SAMPLE_RATE < 4, voice.key
        assert all(n.startswith("resampled from") for n in notes), (voice.key, notes)


@needs_espeak
def test_synthesize_espeak(tmp_path: Path) -> None:
    raw = tmp_path / "raw.wav"
    samples, notes = synthesize("hello", ESPEAK, raw)
    assert notes == ["resampled from 22050 Hz"]
    with wave.open(str(raw)) as w:  # the engine's own output is kept at the given path
        assert w.getframerate() == 22050
    assert samples.dtype == np.float32 and 0.2 < samples.size / SAMPLE_RATE < 2
    assert np.sqrt(np.mean(samples**2)) > 0.01 and np.abs(samples).max() <= 1
    # A text starting with "-" is spoken, not parsed as an option.
    dashed, _ = synthesize("-hello there", ESPEAK)
    assert dashed.size > samples.size


@needs_flite
def test_synthesize_flite() -> None:
    samples, notes = synthesize("hello", SLT)
    assert notes == [] and 0.2 < samples.size / SAMPLE_RATE < 2
    slow, _ = synthesize("hello", Voice("flite", "slt", rate=80))
    assert slow.size > 1.5 * samples.size  # duration_stretch = 160 / rate
    _, notes = synthesize("-hello", Voice("flite", "kal"))
    assert notes == ["resampled from 8000 Hz"]


@needs_espeak
@needs_flite
@pytest.mark.parametrize("voice", [ESPEAK, SLT], ids=["espeak-ng", "flite"])
def test_unspeakable_texts(voice: Voice) -> None:
    for text in ("", "   \n\t"):
        with pytest.raises(SpeechError, match="empty text"):
            synthesize(text, voice)
    with pytest.raises(SpeechError, match="silent audio"):
        synthesize("?!", voice)
    with pytest.raises(SpeechError, match="NUL"):
        synthesize("a\x00b", voice)
    assert issubclass(SpeechError, DataError)


@needs_espeak
@needs_flite
def test_unknown_voice_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'nope'") as e:
        synthesize("hi", Voice("flite", "nope"))
    assert "slt" in str(e.value)
    with pytest.raises(ConfigError, match="'zz'"):
        synthesize("hi", Voice("espeak-ng", "en-us+zz"))
    with pytest.raises(ConfigError, match="en-usa"):
        generate([("hi", Voice("espeak-ng", "en-usa"))], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_missing_engine_names_the_apt_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    for call in (
        lambda: require_engine("espeak-ng"),
        lambda: synthesize("hello", ESPEAK),
        lambda: generate([("hello", SLT)], tmp_path, progress=False),
    ):
        with pytest.raises(DataError, match="not installed") as e:
            call()
        assert "sudo apt-get install -y espeak-ng flite" in str(e.value)
    assert not (tmp_path / "manifest.jsonl").exists()


def manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@needs_espeak
@needs_flite
def test_generate_manifest_resume_and_failures(tmp_path: Path) -> None:
    texts = ["the cat sat", "-a dash first", "?!"]  # the last one cannot be spoken
    items = [(t, v) for v in (ESPEAK, SLT) for t in texts]
    out = tmp_path / "speech"

    first = generate(items, out, workers=2, progress=True)
    assert (first.ok, first.failed, first.skipped, first.duplicates) == (4, 2, 0, 0)
    assert first.clips_per_s > 0 and first.audio_seconds > 1
    records = manifest_lines(out)
    assert len(records) == 6
    by_id = {r["id"]: r for r in records}
    for text, voice in items:
        r = by_id[clip_id(text, voice)]
        assert (r["text"], r["voice"]) == (text, voice.key)
        if text == "?!":
            assert r["status"] == "failed" and "silent" in r["reason"]
            assert not clip_path(out, r["id"]).exists()
            continue
        assert r["status"] == "ok" and r["reason"] is None
        path = clip_path(out, r["id"])
        assert r["path"] == path.relative_to(out).as_posix()
        samples, sr = read_wav(path)
        assert sr == SAMPLE_RATE and samples.size == r["samples"]
        assert r["seconds"] == pytest.approx(samples.size / SAMPLE_RATE, abs=1e-3)
        assert r["notes"] == (["resampled from 22050 Hz"] if voice is ESPEAK else [])

    # Nothing new: done clips are skipped; failures are kept unless retried.
    again = generate(items, out, progress=False, retry_failed=False)
    assert (again.ok, again.failed, again.skipped) == (0, 0, 6)
    assert len(manifest_lines(out)) == 6
    retried = generate(items + items[:1], out, progress=False)
    assert (retried.ok, retried.failed, retried.skipped, retried.duplicates) == (0, 2, 4, 1)
    assert len(manifest_lines(out)) == 8
    assert len(read_manifest(out)) == 6  # last record per id

    # A crash: one wav lost, the last manifest line cut mid-write.
    lost = clip_path(out, clip_id("the cat sat", SLT))
    lost.unlink()
    manifest = out / "manifest.jsonl"
    manifest.write_text(manifest.read_text() + '{"id": "12ab", "te')
    with pytest.warns(UserWarning, match="truncated last line"):
        assert len(read_manifest(out)) == 6
    with pytest.warns(UserWarning, match="truncated last line"):
        resumed = generate(items, out, progress=False, retry_failed=False)
    assert (resumed.ok, resumed.failed, resumed.skipped) == (1, 0, 5)
    assert lost.exists()
    records = manifest_lines(out)  # every line parses again
    assert len(records) == 9 and records[-1]["id"] == clip_id("the cat sat", SLT)


def test_read_manifest_rejects_a_corrupt_middle_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text('{"id": "a", "status": "ok"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(DataError, match="line 2"):
        read_manifest(tmp_path)
    assert read_manifest(tmp_path / "nothing-here") == []


def test_generate_rejects_bad_workers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="workers"):
        generate([], tmp_path, workers=0)
    summary = generate([], tmp_path, progress=False)
    assert (summary.ok, summary.failed, summary.skipped, summary.clips_per_s) == (0, 0, 0, 0.0)
