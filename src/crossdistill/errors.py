"""Errors that speak to the user.

Every error crossdistill raises on purpose is a :class:`CrossDistillError`: one message that says
*what* is wrong and *where*, plus a ``hint`` on how to fix it. The CLI prints these without a
traceback (``--debug`` shows it).
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Iterable
from types import ModuleType


class CrossDistillError(Exception):
    """Base class: a problem the user can fix, with a hint on how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class ConfigError(CrossDistillError):
    """A recipe or override that does not validate."""


class UnknownNameError(CrossDistillError, KeyError):
    """A registered name (loss, model, data source, ...) that does not exist."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return Exception.__str__(self)


class TapError(CrossDistillError):
    """A tap on a module path that does not exist or whose output cannot be selected."""


class KnowledgeError(CrossDistillError, KeyError):
    """A loss needs a Knowledge key that a model did not produce."""

    def __str__(self) -> str:
        return Exception.__str__(self)


class ShapeError(CrossDistillError, ValueError):
    """Tensors that a loss or adapter must combine do not have compatible shapes."""


class DataError(CrossDistillError):
    """A data file that is missing, truncated or malformed."""


class StoreError(DataError):
    """A knowledge store that is missing, incomplete, corrupted or made for another recipe."""


class CheckpointError(CrossDistillError):
    """A checkpoint or weights file that is missing, corrupted or does not fit the model."""


class NonFiniteLossError(CrossDistillError, FloatingPointError):
    """A loss became NaN or Inf during training."""


class CallbackError(CrossDistillError):
    """A training callback or logger (``train.loggers``, ``train.callbacks``) raised."""


class WriteError(CrossDistillError, OSError):
    """A file crossdistill writes could not be written: the disk is full, the folder is
    read-only or not writable. Also an :class:`OSError` (its ``errno`` kept), so code that
    already handles write failures as ``OSError`` still does."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        errno: int | None = None,
        next_step: str | None = None,
    ) -> None:
        super().__init__(message, hint if next_step is None else f"{hint}; then {next_step}")
        self.advice, self.next_step = hint, next_step
        self.errno = errno
        self.strerror = os.strerror(errno) if errno is not None else None

    def __str__(self) -> str:  # OSError would print "[Errno N] ..." without the hint
        return Exception.__str__(self)

    def with_next_step(self, step: str) -> WriteError:
        """The same error, its hint ending in ``step`` (what to run once space is freed)."""
        return WriteError(self.message, self.advice, self.errno, step)


class UntrustedCodeError(CrossDistillError):
    """A run, export or store folder (data) names code by import path that the user has not
    allowed (``--allow-import PKG``)."""


def close_matches(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Names in ``known`` that look like a misspelling of ``name``."""
    return difflib.get_close_matches(name, list(known), n=n, cutoff=0.5)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A hint sentence: close matches first, then every known name."""
    known = sorted(known)
    close = close_matches(name, known)
    prefix = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{prefix}known: {', '.join(known) if known else '(none registered)'}"


TEXT_EXTRA = "(or: pip install 'crossdistill[text]')"


def require(
    module: str, who: str, hint: str, error: type[CrossDistillError] = ConfigError
) -> ModuleType:
    """``import module`` for an optional feature, or ``error`` saying that ``who`` needs it and,
    in ``hint``, how to install it (e.g. ``require("tokenizers", "static_embedding",
    "pip install tokenizers")``)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise error(
            f"{who} needs the package {package!r}, which is not installed", hint=hint
        ) from None
