"""Spoken words paired with their text: synthetic speech of WordNet nouns, several voices.

Each text is one common English noun from WordNet 3.0 (a lemma of letters only, attested in the
SemCor sense counts, whose most frequent sense falls in one of nine lexicographer classes:
animal, plant, food, body, person, location, feeling, time, substance). Its class is the label
of zero-shot spoken-word classification. The speech is **synthetic**: espeak-ng and flite
speak every text in several voices, rates and pitches
(:func:`crossdistill.domains.speech.tts.default_voices`), generated once into ``root``
(resumable, with a manifest) and resampled to 16 kHz.

The split holds out *texts* (a hash of the word puts ``test_percent`` of them aside) and
*voices* (``held_out_voices`` of them, never heard in training):

- ``train``: training words, each spoken by ``voices_per_text`` of the training voices;
- ``test``: held-out words, each spoken by every held-out voice;
- ``test_voices``: training words (up to ``eval_texts``) spoken by the held-out voices.

The teacher reads the text, the student hears the clip (``student: [text, speech]`` gives a
two-tower student both). ``meta["text_id"]`` numbers the split's distinct texts (what retrieval
ranks), ``meta["voice"]`` the voice of each clip.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdistill.data.clips import Clips
from crossdistill.data.sources.base import DATA_SOURCES, check_split
from crossdistill.data.split import PairSplit
from crossdistill.domains.speech.audio import SAMPLE_RATE, read_wav
from crossdistill.domains.speech.tts import (
    Voice,
    clip_path,
    default_voices,
    generate,
    read_manifest,
)
from crossdistill.domains.text.sentences import CLASS_NAMES as LEXNAMES
from crossdistill.domains.text.sentences import DEFAULT_ROOT as WORDNET_ROOT
from crossdistill.domains.text.sentences import INSTALL_HINT
from crossdistill.errors import ConfigError, DataError

SPLITS = ("train", "test", "test_voices")
# lexicographer class -> the class name a text teacher reads in zero-shot classification
CLASSES: dict[str, str] = {
    "noun.animal": "animal",
    "noun.plant": "plant",
    "noun.food": "food",
    "noun.body": "body part",
    "noun.person": "person",
    "noun.location": "place",
    "noun.feeling": "feeling",
    "noun.time": "time",
    "noun.substance": "substance",
}
DEFAULT_ROOT = "runs/speech/wordnet_words"
_WORD = re.compile(r"[a-z]{3,12}")


@lru_cache(maxsize=2)
def spoken_words(root: str = WORDNET_ROOT) -> tuple[tuple[str, str], ...]:
    """``(word, lexicographer class)`` of every noun kept (see the module docstring), sorted.

    ``index.noun`` lists a lemma's senses most frequent first, as byte offsets into
    ``data.noun``, whose second field is the sense's lexicographer file number.
    """
    index, data_path = Path(root) / "index.noun", Path(root) / "data.noun"
    if not index.is_file() or not data_path.is_file():
        raise DataError(f"WordNet 3.0 not found: no {index} or {data_path}", hint=INSTALL_HINT)
    data = data_path.read_bytes()
    words = []
    for number, line in enumerate(index.read_text(encoding="latin-1").splitlines(), 1):
        if line.startswith("  ") or not line.strip():
            continue  # the licence header
        fields = line.split()
        try:
            pointers = int(fields[3])
            tagged, first = int(fields[5 + pointers]), int(fields[6 + pointers])
            lexname = LEXNAMES[int(data[first : data.index(b"\n", first)].split()[1])]
        except (IndexError, ValueError):
            raise DataError(
                f"{index}:{number}: not a WordNet index line", hint=INSTALL_HINT
            ) from None
        if tagged >= 1 and _WORD.fullmatch(fields[0]) and lexname in CLASSES:
            words.append((fields[0], lexname))
    return tuple(sorted(words))


def _held_out_text(word: str, test_percent: int) -> bool:
    return int(hashlib.sha256(word.encode()).hexdigest()[:8], 16) % 100 < test_percent


def _pick_voices(
    voices: Sequence[Voice], held_out: int, seed: int
) -> tuple[list[Voice], list[Voice]]:
    if not 0 < held_out < len(voices):
        raise ConfigError(
            f"speech_text: held_out_voices must lie in 1..{len(voices) - 1}, got {held_out}"
        )
    order = np.random.default_rng(seed).permutation(len(voices))
    test = sorted(order[:held_out])
    return [v for i, v in enumerate(voices) if i not in test], [voices[i] for i in test]


def _pairs(
    split: str,
    words: Sequence[tuple[str, str]],
    train_voices: Sequence[Voice],
    test_voices: Sequence[Voice],
    voices_per_text: int,
    eval_texts: int,
    test_percent: int,
    seed: int,
) -> list[tuple[str, str, Voice]]:
    """The (word, class, voice) triples of ``split``, in a fixed order. A word's voices depend
    on the word and ``seed`` alone, so a sample of the words (``max_texts``) is a sample of the
    full set's clips."""
    held = [w for w in words if _held_out_text(w[0], test_percent)]
    seen = [w for w in words if not _held_out_text(w[0], test_percent)]
    if split == "test":
        return [(w, c, v) for w, c in held for v in test_voices]
    if split == "test_voices":
        pick = sorted(seen, key=lambda wc: _word_key(wc[0], seed))[:eval_texts]
        return [(w, c, test_voices[_word_key(w, seed) % len(test_voices)]) for w, c in sorted(pick)]
    k = min(voices_per_text, len(train_voices))
    return [
        (w, c, train_voices[j])
        for w, c in seen
        for j in sorted(
            np.random.default_rng([seed, _word_key(w, 0)]).choice(
                len(train_voices), k, replace=False
            )
        )
    ]


def _word_key(word: str, seed: int) -> int:
    return int(hashlib.sha256(f"{seed} {word}".encode()).hexdigest()[:8], 16)


def _clips(
    root: Path,
    pairs: Sequence[tuple[str, str, Voice]],
    max_samples: int,
    workers: int,
    progress: bool,
) -> tuple[Clips, list[bool]]:
    """Generate what is missing, then read every clip; ``ok[i]`` is False for a failed one.

    The clips of a split are also packed into one ``root/packed/<hash>.npz`` (the hash of the
    clip ids): reading one array is much faster than thousands of wavs on every run.
    """
    generate([(w, v) for w, _, v in pairs], root, workers=workers, progress=progress)
    records = {(r["text"], r["voice"]): r for r in read_manifest(root)}
    found = [records.get((word, voice.key)) for word, _, voice in pairs]
    ok = [r is not None and r["status"] == "ok" for r in found]
    ids = [r["id"] for r, good in zip(found, ok, strict=True) if good and r is not None]
    packed = root / "packed" / f"{hashlib.sha256(' '.join(ids).encode()).hexdigest()[:16]}.npz"
    if packed.is_file():
        try:
            clips = Clips.load(packed)
        except DataError as exc:  # a damaged pack is only a cache: rebuild it from the wavs
            warnings.warn(f"{exc.message}; rebuilding it", stacklevel=3)
        else:
            if len(clips) == len(ids):
                clips.max_samples = max_samples
                return clips, ok
    audio = []
    for id_ in ids:
        samples, rate = read_wav(clip_path(root, id_))
        if rate != SAMPLE_RATE:
            raise DataError(f"{root}: clip {id_} is at {rate} Hz, not {SAMPLE_RATE}")
        audio.append(samples)
    clips = Clips.from_list(audio, SAMPLE_RATE, max_samples)
    packed.parent.mkdir(exist_ok=True)
    clips.save(packed)
    return clips, ok


@DATA_SOURCES.register("speech_text")
def load(
    split: str,
    root: str = DEFAULT_ROOT,
    max_texts: int | None = None,
    voices_per_text: int = 3,
    held_out_voices: int = 3,
    eval_texts: int = 300,
    test_percent: int = 10,
    max_seconds: float = 1.5,
    student: str | Sequence[str] = "speech",
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> PairSplit:
    """The ``split`` of (text, synthetic speech) pairs; see the module docstring.

    ``max_texts`` keeps a fixed sample of the words (for small runs); ``student`` is the
    modality (or list of modalities) the student view gets. Clips that the synthesizer could
    not produce are reported by :func:`crossdistill.domains.speech.tts.generate` and left out here.
    """
    check_split(split, "speech_text", SPLITS)
    words: list[tuple[str, str]] = list(spoken_words())
    if max_texts is not None:
        order = np.random.default_rng(seed).permutation(len(words))[:max_texts]
        words = [words[i] for i in sorted(order)]
    train_voices, test_voices = _pick_voices(default_voices(), held_out_voices, seed)
    pairs = _pairs(
        split, words, train_voices, test_voices, voices_per_text, eval_texts, test_percent, seed
    )
    if not pairs:
        raise DataError(f"speech_text/{split} is empty", hint="raise max_texts or test_percent")
    clips, ok = _clips(Path(root), pairs, int(max_seconds * SAMPLE_RATE), workers, progress)
    pairs = [p for p, good in zip(pairs, ok, strict=True) if good]
    texts = [w for w, _, _ in pairs]
    if not all(ok):
        warnings.warn(
            f"speech_text/{split}: {ok.count(False)} of {len(ok)} clips could not be"
            f" synthesized and are left out (reasons in {Path(root) / 'manifest.jsonl'})",
            stacklevel=2,
        )
    distinct = {t: j for j, t in enumerate(dict.fromkeys(texts))}
    class_ids = list(CLASSES)
    student_side: Any = student if isinstance(student, str) else tuple(student)
    return PairSplit(
        modalities={"text": texts, "speech": clips},
        targets=torch.tensor([class_ids.index(c) for _, c, _ in pairs], dtype=torch.int64),
        class_names=[CLASSES[c] for c in class_ids],
        name=f"speech_text/{split}",
        sides={"student": student_side},
        meta={
            "text_id": np.array([distinct[t] for t in texts], dtype=np.int64),
            "voice": np.array([v.key for _, _, v in pairs]),
        },
    )
