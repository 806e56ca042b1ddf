"""A rich progress bar with rate and ETA, shared by training epochs and the store writer."""

from __future__ import annotations

import time
from typing import Any


class ProgressBar:
    """Counts ``total`` items of ``unit`` with their rate, elapsed time and ETA, and the last
    loss when ``show_loss``; a no-op when not ``enabled`` (rich is imported only then)."""

    def __init__(
        self, enabled: bool, description: str, total: int, unit: str = "it", show_loss: bool = False
    ) -> None:
        self.enabled, self.description, self.total = enabled, description, total
        self.unit, self.show_loss = unit, show_loss
        self._bar: Any = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            loss = [TextColumn("loss {task.fields[loss]:.4f}")] if self.show_loss else []
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                *loss,
                TextColumn(f"{{task.fields[rate]:,.1f}} {self.unit}/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._bar.start()
            self._task = self._bar.add_task(
                self.description, total=self.total, loss=float("nan"), rate=0.0
            )
            self._start, self._done = time.perf_counter(), 0
        return self

    def advance(self, n: int = 1, loss: float | None = None) -> None:
        if self._bar is not None:
            self._done += n
            rate = self._done / max(time.perf_counter() - self._start, 1e-9)
            fields = {"rate": rate} if loss is None else {"rate": rate, "loss": loss}
            self._bar.update(self._task, advance=n, **fields)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
