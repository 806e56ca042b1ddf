"""The data-source registry: a source is ``load(split, **params) -> Split``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from crossdistill.data.split import Split
from crossdistill.errors import DataError
from crossdistill.registry import Registry

SPLITS: tuple[str, ...] = ("train", "test")


# A source is ``load(split: str, **params) -> Split``.
DATA_SOURCES: Registry[Callable[..., Split]] = Registry("data source", returns=Split)


def check_split(split: str, source: str, valid: Sequence[str] = SPLITS) -> str:
    """``split`` if it is one of ``valid``, else a :class:`DataError` listing the valid ones."""
    if split not in valid:
        raise DataError(
            f"data source {source!r} has no split {split!r}",
            hint=f"valid splits: {', '.join(valid)}",
        )
    return split
