"""Synthetic speech from text with the espeak-ng and flite command-line synthesizers.

A text teacher's sentences become a speech student's input: :func:`generate` speaks each
``(text, voice)`` pair into a 16 kHz mono 16-bit wav under ``out_dir/clips/`` and records one JSON
line per pair in ``out_dir/manifest.jsonl``. It resumes where a crashed run stopped, and records
failures with their reason instead of dropping them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossdistill._util.progress import ProgressBar
from crossdistill.domains.speech.audio import SAMPLE_RATE, check_clip, load_clip, write_wav
from crossdistill.errors import ConfigError, DataError, close_matches, did_you_mean

ENGINES = ("espeak-ng", "flite")
INSTALL_HINT = "sudo apt-get install -y espeak-ng flite"
TIMEOUT_S = 30
MANIFEST = "manifest.jsonl"


class SpeechError(DataError):
    """A text that a synthesizer could not speak (empty, unpronounceable, failed or silent)."""


@dataclass(frozen=True)
class Voice:
    """One synthesizer voice.

    ``name`` is an espeak-ng voice with an optional variant (``"en-us+f3"``) or a flite voice
    (``"slt"``). ``rate`` is in words per minute (espeak-ng ``-s``; flite gets
    ``duration_stretch = 160 / rate``). ``pitch`` is espeak-ng's ``-p`` (0-99); flite voices have
    no comparable relative control (its ``int_f0_target_mean`` is an absolute Hz value that would
    turn every voice into the same speaker), so they must keep the default 50.
    """

    engine: str
    name: str
    rate: int = 160
    pitch: int = 50

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(
                f"Voice: unknown engine {self.engine!r}", hint=did_you_mean(self.engine, ENGINES)
            )
        if not self.name or self.name != self.name.strip() or self.name.startswith("-"):
            raise ConfigError(f"Voice: bad voice name {self.name!r} for {self.engine}")
        if not 80 <= self.rate <= 450:
            raise ConfigError(f"Voice {self.name}: rate must be 80..450 words/min, got {self.rate}")
        if not 0 <= self.pitch <= 99:
            raise ConfigError(f"Voice {self.name}: pitch must be 0..99, got {self.pitch}")
        if self.engine == "flite" and self.pitch != 50:
            raise ConfigError(
                f"Voice {self.name}: flite voices have no pitch control, got pitch={self.pitch}",
                hint="leave pitch at 50 for flite voices",
            )

    @property
    def key(self) -> str:
        """A short stable identifier, e.g. ``espeak-ng:en-us+f3:r160:p50``."""
        return f"{self.engine}:{self.name}:r{self.rate}:p{self.pitch}"

    @classmethod
    def from_key(cls, key: str) -> Voice:
        """The voice whose :attr:`key` is ``key``."""
        try:
            engine, name, rate, pitch = key.rsplit(":", 3)
            if not (rate.startswith("r") and pitch.startswith("p")):
                raise ValueError
            return cls(engine, name, int(rate[1:]), int(pitch[1:]))
        except ValueError:
            raise ConfigError(
                f"not a voice key: {key!r}", hint="expected engine:name:r<rate>:p<pitch>"
            ) from None


def default_voices() -> list[Voice]:
    """16 voices for speaker variety: 11 espeak-ng English accents (US, British, Scottish, RP,
    Caribbean, New York, Lancaster, West Midlands), each with a different formant variant
    (``+f1..f5`` female, ``+m1..m5`` male) and a spread of rates and pitches, plus the five
    general-purpose flite voices (``kal`` is an 8 kHz diphone voice and is upsampled, so it
    carries nothing above 4 kHz; flite's ``awb_time`` only speaks clock times and is left out).
    """
    espeak = [
        ("en-us", 160, 50),
        ("en-us+f3", 170, 60),
        ("en-us+m3", 150, 40),
        ("en-gb+f2", 160, 55),
        ("en-gb+m1", 175, 45),
        ("en-gb-scotland+m2", 160, 50),
        ("en-gb-x-rp+f4", 150, 65),
        ("en-029+m4", 165, 45),
        ("en-us-nyc+f1", 180, 55),
        ("en-gb-x-gbclan+m5", 155, 50),
        ("en-gb-x-gbcwmd+f5", 165, 60),
    ]
    flite = [("kal", 160), ("kal16", 150), ("awb", 160), ("rms", 170), ("slt", 160)]
    return [Voice("espeak-ng", n, r, p) for n, r, p in espeak] + [
        Voice("flite", n, r) for n, r in flite
    ]


def require_engine(engine: str) -> str:
    """The path of the ``engine`` program, or :class:`DataError` with the apt command."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown speech engine {engine!r}", hint=did_you_mean(engine, ENGINES))
    path = shutil.which(engine)
    if path is None:
        raise DataError(
            f"speech synthesis needs the program {engine!r}, but {engine} is not installed",
            hint=INSTALL_HINT,
        )
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=TIMEOUT_S)


@functools.cache
def available_voices(engine: str) -> frozenset[str]:
    """The voice (and, for espeak-ng, variant) names that ``engine`` knows, lowercased."""
    exe = require_engine(engine)
    if engine == "flite":
        # "Voices available: kal awb_time kal16 awb rms slt"
        out = _run([exe, "-lv"]).stdout
        return frozenset(out.split(":", 1)[-1].lower().split())
    names: set[str] = set()
    for listing in ("--voices", "--voices=variant"):
        for line in _run([exe, listing]).stdout.splitlines()[1:]:
            # Pty Language Age/Gender VoiceName File [Other Languages]
            cols = line.split()
            if len(cols) >= 5:
                names.update(c.lower() for c in (cols[1], cols[3], cols[4]))
                names.add(cols[4].rsplit("/", 1)[-1].lower())
    return frozenset(names)


def check_voice(voice: Voice) -> None:
    """:class:`ConfigError` when ``voice`` names a voice or variant its engine does not have
    (both engines would silently fall back to their default voice instead)."""
    known = available_voices(voice.engine)
    parts = voice.name.split("+", 1) if voice.engine == "espeak-ng" else [voice.name]
    for part in parts:
        if part.lower() not in known:
            raise ConfigError(
                f"{voice.engine} has no voice or variant {part!r} (in {voice.key})",
                hint=(
                    did_you_mean(part.lower(), known)
                    if voice.engine == "flite"
                    else _espeak_hint(part.lower(), known)
                ),
            )


def _espeak_hint(name: str, known: frozenset[str]) -> str:
    close = close_matches(name, known)
    prefix = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{prefix}see `espeak-ng --voices=en` and `espeak-ng --voices=variant`"


def synthesize(
    text: str, voice: Voice, path: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Speak ``text`` with ``voice``: 16 kHz mono float32 samples and notes on conversions
    ("resampled from 22050 Hz", "clipped").

    The engine writes its own wav to ``path`` (a temporary file when None). The text goes in as a
    single argv item after ``--`` (espeak-ng) or through a text file (flite), never a shell, so it
    may start with "-". Raises :class:`SpeechError` with the reason when the text is empty, the
    engine fails, times out or writes nothing, or the result is silent.
    """
    if not text or not text.strip():
        raise SpeechError(f"cannot speak an empty text {text!r}")
    if "\x00" in text:
        raise SpeechError(f"cannot speak a text with a NUL character: {text[:60]!r}")
    exe = require_engine(voice.engine)
    check_voice(voice)
    with tempfile.TemporaryDirectory(prefix="crossdistill-tts-") as tmp:
        out = Path(path) if path is not None else Path(tmp) / "out.wav"
        out.unlink(missing_ok=True)  # a stale file must not pass for this run's output
        if voice.engine == "espeak-ng":
            cmd = [exe, "-v", voice.name, "-s", str(voice.rate), "-p", str(voice.pitch)]
            cmd += ["-w", str(out), "--", text]
        else:
            text_file = Path(tmp) / "text.txt"
            text_file.write_text(text, encoding="utf-8")
            cmd = [exe, "-voice", voice.name]
            if voice.rate != 160:
                cmd += ["--setf", f"duration_stretch={160 / voice.rate:.4f}"]
            cmd += ["-f", str(text_file), "-o", str(out)]
        try:
            done = _run(cmd)
        except subprocess.TimeoutExpired:
            raise SpeechError(
                f"{voice.engine} took over {TIMEOUT_S} s on {text[:60]!r}",
                hint="split long texts into sentences",
            ) from None
        if done.returncode != 0:
            err = (done.stderr or done.stdout).strip()[-300:]
            raise SpeechError(f"{voice.engine} exited with status {done.returncode}: {err}")
        if not out.is_file() or out.stat().st_size == 0:
            raise SpeechError(f"{voice.engine} wrote no audio for {text[:60]!r}")
        try:
            samples, notes = load_clip(out, SAMPLE_RATE)
        except DataError as e:
            raise SpeechError(f"{voice.engine} wrote an unreadable wav: {e.message}") from None
    problems = check_clip(samples, SAMPLE_RATE)
    fatal = [p for p in problems if p != "clipped"]
    if fatal:
        raise SpeechError(f"{voice.engine} produced {', '.join(fatal)} audio for {text[:60]!r}")
    return samples, notes + problems


def clip_id(text: str, voice: Voice) -> str:
    """A short stable id of a (text, voice) pair: 16 hex digits of a SHA-1."""
    return hashlib.sha1(f"{voice.key}\n{text}".encode()).hexdigest()[:16]


def clip_path(out_dir: str | os.PathLike[str], id_: str) -> Path:
    """Where :func:`generate` puts the clip ``id_`` (256 sub-folders keep folders small)."""
    return Path(out_dir) / "clips" / id_[:2] / f"{id_}.wav"


@dataclass
class GenerateSummary:
    """What one :func:`generate` call did: clips made (``ok``), ``failed`` (recorded in the
    manifest with their reason), ``skipped`` (already done), ``duplicates`` (repeated pairs in
    ``items``), wall-clock ``seconds``, ``clips_per_s`` over the attempted items, and
    ``audio_seconds`` of speech made."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    clips_per_s: float = 0.0
    audio_seconds: float = 0.0
    manifest: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _load_manifest(path: Path) -> tuple[list[dict[str, Any]], int | None]:
    """The records of a manifest and, when its last line is truncated (a crash mid-write), the
    byte offset where that line starts."""
    if not path.exists():
        return [], None
    raw = path.read_bytes()
    records, start = [], 0
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, 1):
        offset, start = start, start + len(line) + 1
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise ValueError("not a record with an id")
        except ValueError as e:
            if number == len(lines):  # the last line, with no newline after it
                warnings.warn(
                    f"{path}: ignoring a truncated last line ({len(line)} bytes)", stacklevel=3
                )
                return records, offset
            raise DataError(
                f"{path}, line {number}: not a manifest record ({e})",
                hint="fix or delete that line; the clips of the other lines are kept",
            ) from None
        records.append(record)
    return records, None


def read_manifest(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The manifest records of ``out_dir``, the last one per id (a retried item overrides its
    failure), in order of first appearance. A truncated last line is ignored with a warning."""
    records, _ = _load_manifest(Path(out_dir) / MANIFEST)
    by_id: dict[str, dict[str, Any]] = {}
    for record in records:
        by_id[record["id"]] = record
    return list(by_id.values())


def _make_clip(text: str, voice: Voice, id_: str, out_dir: Path) -> dict[str, Any]:
    record: dict[str, Any] = {"id": id_, "text": text, "voice": voice.key}
    try:
        samples, notes = synthesize(text, voice)
    except SpeechError as e:
        return record | {
            "status": "failed",
            "reason": e.message,
            "notes": [],
            "samples": 0,
            "seconds": 0.0,
        }
    path = clip_path(out_dir, id_)
    write_wav(path, samples, SAMPLE_RATE)
    return record | {
        "status": "ok",
        "reason": None,
        "notes": notes,
        "samples": int(samples.size),
        "seconds": round(samples.size / SAMPLE_RATE, 4),
        "path": path.relative_to(out_dir).as_posix(),
    }


def generate(
    items: Sequence[tuple[str, Voice]],
    out_dir: str | os.PathLike[str],
    workers: int = 2,
    progress: bool = True,
    retry_failed: bool = True,
) -> GenerateSummary:
    """Speak every ``(text, voice)`` of ``items`` into ``out_dir/clips/<id[:2]>/<id>.wav``
    (16 kHz mono 16-bit) and append one JSON line per item to ``out_dir/manifest.jsonl``:
    ``{id, text, voice, status: "ok"|"failed", reason, notes, samples, seconds, path}``.

    Resumable: ids whose last record is "ok" and whose wav exists are skipped; earlier failures
    are tried again unless ``retry_failed`` is False. Engines and voices are checked before any
    work (a missing program or an unknown voice raises); a text that cannot be spoken is recorded
    as "failed" with its reason. ``workers`` threads each run one synthesizer process at a time.
    """
    if workers < 1:
        raise ConfigError(f"generate: workers must be >= 1, got {workers}")
    voices = {v for _, v in items}
    for engine in sorted({v.engine for v in voices}):
        require_engine(engine)
    for voice in voices:
        check_voice(voice)  # fails fast: every item of a bad voice would fail the same way
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    summary = GenerateSummary(manifest=str(manifest))

    records, truncated_at = _load_manifest(manifest)
    if truncated_at is not None:
        with manifest.open("r+b") as f:  # drop the partial line so the next append starts clean
            f.truncate(truncated_at)
    elif manifest.exists() and manifest.stat().st_size:
        with manifest.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            unterminated = f.read(1) != b"\n"
        if unterminated:  # a complete record cut just before its newline: end that line
            with manifest.open("ab") as f:
                f.write(b"\n")
    last = {r["id"]: r for r in records}

    todo: list[tuple[str, Voice, str]] = []
    seen: set[str] = set()
    for text, voice in items:
        id_ = clip_id(text, voice)
        if id_ in seen:
            summary.duplicates += 1
            continue
        seen.add(id_)
        prev = last.get(id_, {}).get("status")
        done = prev == "ok" and clip_path(out, id_).is_file()
        if done or (prev == "failed" and not retry_failed):
            summary.skipped += 1
        else:
            todo.append((text, voice, id_))

    start = time.perf_counter()
    with (
        manifest.open("a", encoding="utf-8") as log,
        ProgressBar(progress and bool(todo), "tts", total=len(todo), unit="clips") as bar,
        concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        futures = [pool.submit(_make_clip, text, voice, id_, out) for text, voice, id_ in todo]
        try:
            for future in concurrent.futures.as_completed(futures):
                record = future.result()
                log.write(json.dumps(record, ensure_ascii=False) + "\n")
                log.flush()  # one complete line per finished clip survives a crash
                if record["status"] == "ok":
                    summary.ok += 1
                    summary.audio_seconds += record["seconds"]
                else:
                    summary.failed += 1
                bar.advance()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    summary.seconds = time.perf_counter() - start
    summary.clips_per_s = len(todo) / summary.seconds if todo else 0.0
    summary.audio_seconds = round(summary.audio_seconds, 3)
    return summary
