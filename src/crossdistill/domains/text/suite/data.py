"""The evaluation files of the text suite, from gensim's bundled test data, read safely.

gensim ships the public word-similarity, document-similarity and classification sets the suite
uses (``gensim.test.utils.datapath``). gensim is an optional dependency: without it, or without a
file, the suite stops with a :class:`~crossdistill.errors.DataError` naming the file and the fix.

``mini_newsgroup`` is a zlib-compressed *pickle* (of a scikit-learn ``Bunch``, written by Python
2). crossdistill never unpickles untrusted data with the stock unpickler:
:class:`RestrictedUnpickler` resolves only the handful of classes that file needs and refuses
any other global, so a malicious pickle cannot call ``os.system`` or import anything.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from crossdistill.errors import DataError

GENSIM_HINT = "pip install gensim  (its test data holds the text evaluation sets)"


def _datapath(name: str) -> str:
    """gensim's path of a test-data file (imported lazily: gensim is optional)."""
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise DataError(
            f"the text evaluation file {name!r} comes with gensim, which is not installed",
            hint=GENSIM_HINT,
        ) from None
    return str(datapath(name))


def gensim_file(name: str) -> Path:
    """The path of gensim's test-data file ``name``; a DataError names it when it is missing."""
    path = Path(_datapath(name))
    if not path.is_file():
        raise DataError(
            f"text evaluation file {name!r} is missing (looked for {path})",
            hint=f"reinstall gensim, whose test data holds it: pip install --force-reinstall "
            f"gensim  ({GENSIM_HINT})",
        )
    return path


def read_lines(name: str, encoding: str = "utf-8") -> list[str]:
    """The lines of a gensim test-data file, decoded with ``encoding``."""
    path = gensim_file(name)
    try:
        return path.read_bytes().decode(encoding).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}", hint=GENSIM_HINT) from None


def read_word_pairs(name: str) -> tuple[list[str], list[str], np.ndarray]:
    """``(words1, words2, human scores)`` of a tab-separated word-similarity file.

    Lines starting with ``#`` are comments; a first line whose third column is not a number is a
    header. Both are skipped; any other malformed line is an error naming it.
    """
    first, second, scores = [], [], []
    for number, line in enumerate(read_lines(name), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        try:
            score = float(fields[2])
        except (IndexError, ValueError):
            if not scores and len(fields) >= 3:  # a header such as "word1 word2 SimLex999"
                continue
            raise DataError(
                f"{name}:{number}: not a 'word1<TAB>word2<TAB>score' line: {line[:60]!r}",
                hint=f"reinstall gensim: {GENSIM_HINT}",
            ) from None
        first.append(fields[0].strip())
        second.append(fields[1].strip())
        scores.append(score)
    if not scores:
        raise DataError(f"{name} holds no word pairs", hint=f"reinstall gensim: {GENSIM_HINT}")
    return first, second, np.asarray(scores, dtype=np.float64)


# ------------------------------------------------------------------------- safe unpickling


# (module, name) as the pickle names it -> the object it may resolve to. Python 2 names
# (copy_reg, __builtin__) and old sklearn / numpy module paths are listed as written in the file.
def _allowed() -> dict[tuple[str, str], Any]:
    from sklearn.utils import Bunch

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("copy_reg", "_reconstructor"): copyreg._reconstructor,  # type: ignore[attr-defined]
        ("copyreg", "_reconstructor"): copyreg._reconstructor,  # type: ignore[attr-defined]
        ("__builtin__", "dict"): dict,
        ("builtins", "dict"): dict,
        ("__builtin__", "object"): object,
        ("builtins", "object"): object,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
    for module in ("sklearn.datasets.base", "sklearn.datasets._base", "sklearn.utils",
                   "sklearn.utils._bunch"):  # fmt: skip
        allowed[(module, "Bunch")] = Bunch
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only a scikit-learn ``Bunch``, ``dict`` and NumPy arrays.

    ``copyreg._reconstructor`` is allowed because Python 2 pickles build a ``Bunch`` with it;
    it can only instantiate classes that this same allow-list resolved. Every other global
    (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raises a DataError.
    """

    def __init__(self, file: io.BufferedIOBase, *, source: str = "pickle") -> None:
        # latin-1: Python 2 byte strings (the posts, numpy's raw buffers) map 1:1 onto str
        super().__init__(file, encoding="latin1")
        self.source = source
        self._allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source}: refusing to unpickle {module}.{name}: only a scikit-learn Bunch "
                "of lists and NumPy arrays is allowed",
                hint="the file is not the data set it claims to be; reinstall it from a trusted "
                "source",
            ) from None


def safe_unpickle(data: bytes, source: str = "pickle") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; a broken pickle is a DataError."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except DataError:
        raise
    except Exception as exc:  # truncated or malformed pickles raise many kinds of errors
        raise DataError(
            f"{source} is not a readable pickle: {type(exc).__name__}: {exc}",
            hint=f"reinstall gensim: {GENSIM_HINT}",
        ) from None


def load_mini_newsgroup() -> tuple[list[str], np.ndarray, list[str]]:
    """``(posts, labels, label names)`` of gensim's ``mini_newsgroup`` (200 posts, 2 groups)."""
    path = gensim_file("mini_newsgroup")
    try:
        raw = zlib.decompress(path.read_bytes())
    except (OSError, zlib.error) as exc:
        raise DataError(
            f"{path} is not a zlib-compressed file: {exc}", hint=f"reinstall: {GENSIM_HINT}"
        ) from None
    bunch = safe_unpickle(raw, source=str(path))
    try:
        posts, target, names = bunch["data"], np.asarray(bunch["target"]), bunch["target_names"]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path} holds no data/target/target_names ({exc})") from None
    if len(posts) != len(target) or not all(isinstance(p, str) for p in posts):
        raise DataError(f"{path}: {len(posts)} posts but {len(target)} labels")
    return list(posts), target.astype(np.int64), list(names)
