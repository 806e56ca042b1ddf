"""Registered data sources; importing this package registers the built-in ones."""

from __future__ import annotations

import inspect
from typing import Any

from crossdistill.data.sources import (  # noqa: F401  (register)
    audio_files,
    digits,
    fashion_mnist,
    fashion_text,
    sentences,
    speech_text,
    text_file,
    triples,
    wordnet_ranking,
)
from crossdistill.data.sources.base import DATA_SOURCES, SPLITS, ArraySplit, check_split
from crossdistill.errors import ConfigError

__all__ = ["DATA_SOURCES", "SPLITS", "ArraySplit", "check_split", "load_source"]


def load_source(name: str, split: str, **params: Any) -> ArraySplit:
    """The ``split`` of the data source registered as ``name``, built with ``params``."""
    fn = DATA_SOURCES.get(name)
    try:
        inspect.signature(fn).bind(split, **params)
    except TypeError as e:
        accepted = [p for p in inspect.signature(fn).parameters if p != "split"]
        raise ConfigError(
            f"data source {name!r}: {e}",
            hint=f"accepted parameters: {', '.join(accepted) or '(none)'}",
        ) from None
    return fn(split, **params)
