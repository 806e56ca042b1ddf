"""Data sources: named loaders of one split of a data set. Importing this package registers the
built-in ones (one file each)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crossdistill.data.sources.base import DATA_SOURCES, SPLITS, check_split
from crossdistill.data.split import ArraySplit
from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["DATA_SOURCES", "SPLITS", "ArraySplit", "check_split", "load_source"]


def load_source(source: str | Callable[..., Any], split: str, /, **params: Any) -> Any:
    """The ``split`` of the data source ``source`` (a registered name, ``package.module:Callable``
    or the callable itself), built with ``params`` validated against its signature."""
    built = DATA_SOURCES.build(source, params, "data", split=split)
    if isinstance(source, str):  # a run trained on it from Python records where it came from
        built.origin = {"source": source, "params": dict(params), "split": split}
    return built
