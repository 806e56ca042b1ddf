"""The ``crossdistill`` command: one module per command, registered on one typer app.

Commands import the library only when they run, so that ``crossdistill --help`` starts fast.
Errors a user can fix are printed as one message with a hint and exit code 2; ``--debug`` adds
the traceback.
"""

from __future__ import annotations

import os
import sys

from crossdistill.cli._app import app, console, help_text, state
from crossdistill.cli._signals import Interrupted, message, raising_on_signals
from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)  # one module per command
for _command in app.registered_commands:
    _command.help = _command.help or help_text(_command.callback)

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: run the app, turning user errors into one clear message (exit code 2), and
    Ctrl-C / SIGTERM into one line saying how to continue (exit code 130 / 143)."""
    from rich.markup import escape

    from crossdistill.errors import CrossDistillError

    try:
        with raising_on_signals():
            app()  # standalone: click prints usage errors itself and exits with 2
    except CrossDistillError as exc:
        if state["debug"]:
            raise
        # escape(): messages hold paths and YAML like `outputs: [logits]`, not rich markup
        console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        if exc.hint:
            console.print(f"  [yellow]hint:[/] {escape(exc.hint)}", highlight=False)
        sys.exit(2)
    except Interrupted as exc:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one line, not one per rank
            # soft_wrap: the command in it stays one line that can be copied
            console.print(escape(message(exc)), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # before the handlers were installed
        console.print("interrupted")
        sys.exit(130)
    finally:
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            done = sys.exc_info()[1]  # click ends a successful command with SystemExit(0)
            if isinstance(done, SystemExit) and done.code in (0, None):
                # ranks tear gloo down together: a rank that destroyed its process group while
                # another still printed its results once aborted at exit ("terminate called
                # without an active exception", exit code -6)
                dist.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
