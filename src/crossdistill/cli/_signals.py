"""Ctrl-C and SIGTERM: one line saying how to continue, then exit 130 / 143.

Left to Python, SIGINT is a KeyboardInterrupt that typer turns into a silent exit before
crossdistill sees it, and SIGTERM ends the process at once. While :func:`raising_on_signals` is
active (``main`` enters it; nothing is installed at import) either signal raises
:class:`Interrupted` instead: a BaseException that click does not catch and ``except
Exception`` does not swallow, so every ``finally`` runs on the way out (a half-written
checkpoint or file removed, the run's lock released) and ``main`` prints what the running
command registered with :func:`on_interrupt`: where its work stands and the exact command that
continues it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType

from crossdistill.cli._app import state

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

# what the running command says after an interrupt; one command runs per process
_describe: list[Callable[[], str]] = []


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwind, say how to continue, exit ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(_NAMES.get(signum, f"signal {signum}"))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal ended


def on_interrupt(describe: Callable[[], str]) -> None:
    """Let the running command say, after an interrupt, where its work stands and how to
    continue it (``describe`` is called then, so it sees the last checkpoint written)."""
    _describe[:] = [describe]


def command_line(command: str, recipe: Path, sets: Iterable[str], *options: str) -> str:
    """``crossdistill COMMAND RECIPE`` with the ``--import``s, ``--set``s and ``options`` the
    user gave: the command that continues the work, quoted for a shell."""
    words = ["crossdistill", *(w for m in state["imports"] for w in ("--import", m)), command]
    words += [str(recipe), *options, *(w for item in sets for w in ("--set", item))]
    return shlex.join(words)


def message(exc: Interrupted) -> str:
    """The one line printed for ``exc``."""
    line = f"interrupted ({exc})"
    if _describe:
        with contextlib.suppress(Exception):  # the line must come out whatever the state on disk
            return f"{line}: {_describe[0]()}"
    return line


@contextlib.contextmanager
def raising_on_signals() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise :class:`Interrupted` in this process; the previous
    handlers come back on the way out. A second signal while unwinding ends the process at
    once, as without crossdistill."""
    pid = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != pid:  # a forked child (a DataLoader worker) keeps Python's behaviour
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        for sig in previous:
            signal.signal(sig, signal.SIG_DFL)
        raise Interrupted(signum)

    _describe.clear()  # kept past the exit: main prints the message after it
    # a signal the parent chose to ignore (a shell's background job ignores SIGINT) stays so
    ignored = {sig for sig in SIGNALS if signal.getsignal(sig) is signal.SIG_IGN}
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS if sig not in ignored}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
