"""``saved_split``: a split written by :func:`crossdistill.data.saved.save_split`."""

from __future__ import annotations

from pathlib import Path

from crossdistill.data.saved import load_split
from crossdistill.data.sources.base import DATA_SOURCES
from crossdistill.data.split import Split
from crossdistill.errors import DataError


@DATA_SOURCES.register("saved_split")
def load(split: str, path: str) -> Split:
    """The ``split`` saved under ``path`` (``path/<split>/split.json``)."""
    folder = Path(path) / split
    if not (folder / "split.json").is_file():
        saved = sorted(p.parent.name for p in Path(path).glob("*/split.json"))
        raise DataError(
            f"{path} holds no saved split {split!r}",
            hint=f"splits saved there: {', '.join(saved) or 'none'}. A run made by "
            "crossdistill.distill() keeps only its eval_data (as 'eval'), never the training "
            "data, which stays with your code: pass eval_data= to distill() to keep one",
        )
    return load_split(folder)
