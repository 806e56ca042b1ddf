"""A plain-text corpus: one sentence per line of a UTF-8 file, unlabelled.

The corpus a user brings for text distillation (the teacher embeds every sentence; no labels are
needed). Lines are split on ``\\n`` only (a trailing ``\\r`` is dropped, so CRLF files read the
same as LF files; a leading UTF-8 byte-order mark is ignored), stripped of surrounding
whitespace, and kept when at least ``min_chars`` long. Bytes that are not UTF-8 are an error by
default that names the file, line and byte; ``errors: replace`` or ``errors: skip`` read such
files anyway and log how many lines were affected.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from crossdistill.data.sources.base import DATA_SOURCES, SPLITS, check_split
from crossdistill.data.split import TextSplit
from crossdistill.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ERRORS: tuple[str, ...] = ("strict", "replace", "skip")
DEFAULT_TEST_FRACTION = 0.05
_UTF8_BOM = b"\xef\xbb\xbf"
# Files in these encodings decode as "UTF-8 with errors" into garbage under replace/skip, so they
# are refused whatever ``errors`` says.
_OTHER_BOMS: dict[bytes, str] = {
    b"\xff\xfe\x00\x00": "UTF-32LE",
    b"\x00\x00\xfe\xff": "UTF-32BE",
    b"\xff\xfe": "UTF-16LE",
    b"\xfe\xff": "UTF-16BE",
}
_BUCKETS = 10_000


@dataclass
class FileLines:
    """The sentences of one file, and what reading it replaced or skipped."""

    texts: list[str]
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of non-UTF-8 lines


def hash_bucket(text: str) -> int:
    """The bucket (0..9999) of a sentence of a single-file corpus; those below
    ``test_fraction * 10000`` are held out for ``test``. A stable hash of the text, so the split
    does not move when lines are added or reordered, and equal sentences always fall on the
    same side (no duplicate is in both splits)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS


def _decode_error(path: Path, raw: bytes, exc: UnicodeDecodeError, offset: int) -> DataError:
    """The strict-mode error for the first bad byte at file offset ``offset``."""
    line_no = raw.count(b"\n", 0, offset) + 1
    line_start = raw.rfind(b"\n", 0, offset) + 1
    bad = raw[offset : offset + max(1, exc.end - exc.start)]
    return DataError(
        f"text_file: {path} is not UTF-8: line {line_no}, byte offset {offset} in the file"
        f" (byte {offset - line_start} of the line) is {bad.hex(' ')} ({exc.reason})",
        hint="set `errors: replace` (bad bytes become U+FFFD) or `errors: skip` (drop such lines)"
        f" in the source's params, or re-encode the file, e.g. `iconv -f LATIN1 -t UTF-8 {path}"
        " > fixed.txt` (use its real encoding in place of LATIN1)",
    )


def read_lines(path: str | Path, errors: str = "strict", min_chars: int = 1) -> FileLines:
    """The stripped lines of ``path`` at least ``min_chars`` long, decoded as UTF-8.

    ``errors``: ``"strict"`` raises a :class:`DataError` at the first byte that is not UTF-8
    (naming line and byte offset), ``"replace"`` substitutes U+FFFD for such bytes, ``"skip"``
    drops the lines that hold any; the numbers of the affected lines are returned.
    """
    if errors not in ERRORS:
        raise ConfigError(
            f"text_file: errors must be one of {list(ERRORS)}, got {errors!r}",
            hint="errors: strict (fail on bytes that are not UTF-8), replace or skip",
        )
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(
            f"text_file: {path} {what}",
            hint="`path` must name a UTF-8 text file with one sentence per line"
            " (relative paths are read from the working directory)",
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"text_file: cannot read {path}: {exc}") from None
    for bom, encoding in _OTHER_BOMS.items():
        if raw.startswith(bom):
            raise DataError(
                f"text_file: {path} starts with a {encoding} byte-order mark; it must be UTF-8",
                hint=f"re-encode it: iconv -f {encoding} -t UTF-8 {path} > fixed.txt",
            )
    start = len(_UTF8_BOM) if raw.startswith(_UTF8_BOM) else 0
    try:  # the common case: the whole file is UTF-8, one decode
        lines = raw[start:].decode("utf-8").split("\n")
        bad_lines: list[int] = []
    except UnicodeDecodeError as exc:
        if errors == "strict":
            raise _decode_error(path, raw, exc, start + exc.start) from None
        # A line at a time: ``\n`` is never part of a multi-byte UTF-8 sequence, so splitting
        # the bytes first decodes exactly as the whole file would.
        lines, bad_lines = [], []
        for number, chunk in enumerate(raw[start:].split(b"\n"), 1):
            try:
                lines.append(chunk.decode("utf-8"))
            except UnicodeDecodeError:
                bad_lines.append(number)
                lines.append("" if errors == "skip" else chunk.decode("utf-8", "replace"))
    # strip() also drops the \r of CRLF line ends
    texts = [s for s in (line.strip() for line in lines) if len(s) >= min_chars]
    return FileLines(texts=texts, bad_lines=bad_lines)


def _report_bad_lines(path: Path, found: FileLines, errors: str) -> None:
    if not found.bad_lines:
        return
    action = "replaced their bad bytes with U+FFFD" if errors == "replace" else "skipped them"
    first = ", ".join(str(n) for n in found.bad_lines[:5])
    more = ", ..." if len(found.bad_lines) > 5 else ""
    log.warning(
        "text_file: %d line(s) of %s are not valid UTF-8 (lines %s%s); %s",
        len(found.bad_lines),
        path,
        first,
        more,
        action,
    )


def _check_params(
    path: object, min_chars: int, max_sentences: int | None, test_fraction: float | None
) -> None:
    if not isinstance(min_chars, int) or isinstance(min_chars, bool) or min_chars < 1:
        raise ConfigError(f"text_file: min_chars must be an integer >= 1, got {min_chars!r}")
    if max_sentences is not None and (
        not isinstance(max_sentences, int) or isinstance(max_sentences, bool) or max_sentences < 1
    ):
        raise ConfigError(
            f"text_file: max_sentences must be a positive integer, got {max_sentences!r}"
        )
    if isinstance(path, Mapping):
        unknown = [k for k in path if k not in SPLITS]
        if unknown or not path:
            raise ConfigError(
                f"text_file: path as a mapping takes split names {list(SPLITS)} as keys,"
                f" got {list(path)}",
                hint="e.g. path: {train: corpus/train.txt, test: corpus/test.txt}",
            )
        if test_fraction is not None:
            raise ConfigError(
                "text_file: test_fraction applies to a single file; with one file per split"
                " the files are the split",
                hint="remove test_fraction, or give `path` as one file",
            )
    elif not isinstance(path, (str, Path)):
        raise ConfigError(
            f"text_file: path must be a file or a mapping {{train: file, test: file}},"
            f" got {type(path).__name__}"
        )
    elif test_fraction is not None and not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"text_file: test_fraction must be in [0, 1), got {test_fraction!r}")


@DATA_SOURCES.register("text_file")
def load(
    split: str,
    path: str | Mapping[str, str],
    errors: str = "strict",
    min_chars: int = 1,
    max_sentences: int | None = None,
    dedupe: bool = True,
    test_fraction: float | None = None,
) -> TextSplit:
    """Sentences from a UTF-8 text file, one per line; unlabelled (``targets`` is None).

    ``path`` is either one file, split by a stable hash of each sentence: a sentence is in
    ``"test"`` when ``blake2b(utf-8 text) mod 10000 < test_fraction * 10000`` (``test_fraction``
    defaults to 0.05), else in ``"train"``, so the split does not depend on line order and equal
    sentences fall on the same side; or a mapping ``{train: file, test: file}`` whose files are
    the splits (then ``test_fraction`` must be unset).

    Lines are split on ``\\n`` (CRLF and a UTF-8 byte-order mark are handled), stripped of
    surrounding whitespace; empty lines and lines shorter than ``min_chars`` characters are
    dropped. ``errors`` decides what a line with bytes that are not UTF-8 does: ``strict`` (the
    default) raises a :class:`DataError` naming the file, the line and the byte offset,
    ``replace`` substitutes U+FFFD, ``skip`` drops the line; both log a warning with how many
    lines were affected. ``dedupe`` keeps only the first occurrence of a sentence (within the
    file). ``max_sentences`` keeps the first that many of the split, in file order.
    """
    check_split(split, "text_file")
    _check_params(path, min_chars, max_sentences, test_fraction)
    if isinstance(path, Mapping):
        if split not in path:
            raise DataError(
                f"text_file: path names no file for split {split!r} (it has {list(path)})",
                hint=f"add `{split}: FILE` to path, or give path as one file to split by hash",
            )
        file = Path(path[split]).expanduser()
    else:
        file = Path(path).expanduser()
    found = read_lines(file, errors=errors, min_chars=min_chars)
    _report_bad_lines(file, found, errors)
    texts = list(dict.fromkeys(found.texts)) if dedupe else found.texts
    if not isinstance(path, Mapping):
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction)
        threshold = round(fraction * _BUCKETS)
        texts = [t for t in texts if (hash_bucket(t) < threshold) == (split == "test")]
    if max_sentences is not None:
        texts = texts[:max_sentences]
    if not texts:
        raise DataError(
            f"text_file: split {split!r} of {file} has no sentences"
            f" ({len(found.texts)} lines of at least {min_chars} characters in the file)",
            hint="check the file and min_chars; with one file, test_fraction sets the share of"
            " sentences held out for test",
        )
    return TextSplit(texts=texts, targets=None, class_names=[], name=f"text_file/{split}")
