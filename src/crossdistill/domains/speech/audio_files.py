"""Your own (text, speech) pairs: a JSON-lines file naming a wav and its text on each line.

Each line is ``{"text": str, "audio": "path/to/clip.wav"}`` (a relative path is relative to
the file), with an optional ``"label"`` (a class name, for zero-shot classification) and
``"group"`` (e.g. the speaker: examples of one group stay in one split). Any PCM wav works:
other sample rates are resampled to 16 kHz and several channels are averaged, and both are
reported. Silent or empty clips cannot teach anything and are left out, clipped ones are kept;
clips longer than ``max_seconds`` are served as their middle ``max_seconds``; every such clip is
named in a warning, never dropped or cropped silently. To use every second of long recordings,
cut them into windows: ``data: {source: windows, params: {source: audio_files, params: {path:
..., max_seconds: 600}, size: 24000}}`` gives one example per 1.5 s window of every clip, and
the windows of one recording stay in its split (a ``max_seconds`` above the longest clip keeps
this source from reporting clips as cropped that the windows use in full).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from crossdistill.data.clips import Clips
from crossdistill.data.sources.base import DATA_SOURCES, check_split
from crossdistill.data.split import PairSplit
from crossdistill.domains.speech.audio import SAMPLE_RATE, check_clip, load_clip
from crossdistill.domains.text.text_file import _BUCKETS, DEFAULT_TEST_FRACTION, hash_bucket
from crossdistill.errors import ConfigError, DataError

SHOWN = 5  # clips named in a warning before "and N more"


def read_pairs(path: Path) -> list[dict[str, str]]:
    """The lines of a pairs file, each checked to have a text and an existing wav."""
    if not path.is_file():
        raise DataError(f"audio pairs file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, audio = row["text"], row["audio"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(
                f"{path}:{number}: not a pairs line",
                hint='each line is {"text": "...", "audio": "clip.wav"} (label, group optional)',
            ) from None
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{number}: the text is empty")
        wav = (path.parent / audio).expanduser()
        if not wav.is_file():
            raise DataError(f"{path}:{number}: audio file {wav} does not exist")
        rows.append({**row, "audio": str(wav), "line": number})
    if not rows:
        raise DataError(f"audio pairs file {path} holds no pairs")
    return rows


def _report(path: Path, what: str, items: list[str]) -> None:
    if items:
        more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
        warnings.warn(
            f"{path}: {len(items)} clips {what}: {', '.join(items[:SHOWN])}{more}", stacklevel=3
        )


@DATA_SOURCES.register("audio_files")
def load(
    split: str,
    path: str,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    max_seconds: float = 1.5,
    student: str | list[str] = "speech",
) -> PairSplit:
    """The ``split`` of the pairs in ``path``: a line is in ``"test"`` when a stable hash of
    its ``group`` (default: its text) falls in the ``test_fraction`` share, so one speaker or
    one text never straddles the splits. Clips are served as ``max_seconds`` of 16 kHz audio:
    longer ones as their middle ``max_seconds`` (each named in a warning); the ``windows``
    source cuts them into windows instead, to use every second."""
    check_split(split, "audio_files")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"audio_files: test_fraction must be in [0, 1), got {test_fraction!r}")
    file = Path(path).expanduser()
    threshold = round(test_fraction * _BUCKETS)
    rows = [
        r
        for r in read_pairs(file)
        if (hash_bucket(str(r.get("group", r["text"]))) < threshold) == (split == "test")
    ]
    max_samples = int(max_seconds * SAMPLE_RATE)
    kept, audio, changed, bad, clipped, cropped = [], [], [], [], [], []
    for row in rows:
        samples, notes = load_clip(row["audio"])
        problems = check_clip(samples, SAMPLE_RATE)
        where = f"line {row['line']} ({Path(row['audio']).name})"
        if notes:
            changed.append(f"{where}: {', '.join(notes)}")
        if {"silent", "empty", "non-finite"} & set(problems):
            bad.append(f"{where}: {', '.join(problems)}")
            continue
        if "clipped" in problems:
            clipped.append(where)
        if len(samples) > max_samples:  # Clips serves the middle max_samples of a longer clip
            cropped.append(f"{where}: {len(samples) / SAMPLE_RATE:.1f} s")
        kept.append(row)
        audio.append(samples)
    _report(file, "converted to 16 kHz mono", changed)
    _report(file, "left out (nothing to hear)", bad)
    _report(file, "clipped (kept)", clipped)
    _report(
        file,
        f"longer than max_seconds={max_seconds}, served as their middle {max_seconds} s (the"
        " windows source uses all of a long recording)",
        cropped,
    )
    if not kept:
        raise DataError(f"audio_files: split {split!r} of {file} has no usable clips")
    labels = [r.get("label") for r in kept]
    class_names = sorted({str(x) for x in labels if x is not None})
    targets = None
    if class_names:
        if None in labels:
            raise DataError(f"{file}: some lines have a label and some do not")
        targets = torch.tensor([class_names.index(str(x)) for x in labels], dtype=torch.int64)
    texts = [r["text"] for r in kept]
    ids = {t: j for j, t in enumerate(dict.fromkeys(texts))}
    return PairSplit(
        modalities={
            "text": texts,
            "speech": Clips.from_list(audio, SAMPLE_RATE, max_samples),
        },
        targets=targets,
        class_names=class_names,
        name=f"audio_files/{split}",
        sides={"student": student if isinstance(student, str) else tuple(student)},
        meta={"text_id": np.array([ids[t] for t in texts], dtype=np.int64)},
    )
