"""The typer app every command registers on, the console, and the options of the whole
command line (``--debug``, ``--import``, ``--allow-import``)."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Knowledge distillation across architectures and modalities.",
)
console = Console(stderr=True)
state: dict[str, Any] = {"debug": False, "imports": []}


def _print_version(value: bool) -> None:
    """``--version``: the package's version on stdout, before any command or library import."""
    if value:
        from crossdistill._version import __version__

        typer.echo(f"crossdistill {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
    import_: Annotated[
        list[str] | None,
        typer.Option(
            "--import",
            help="a module to import first, so that its plug-ins register (repeatable)",
        ),
    ] = None,
    allow_import: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-import",
            metavar="PKG",
            help="let run and export folders name code of this package by import path "
            "(repeatable; also CROSSDISTILL_ALLOW_IMPORT=a,b)",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    state["debug"] = debug
    state["imports"] = list(import_ or [])
    # A run or export folder is data: it may name code only by registered name, or by an import
    # path inside what the user allows here (the modules they --import included).
    if allow_import or state["imports"]:
        from crossdistill.registry import allow_imports

        allow_imports(allow_import or [])
        allow_imports(state["imports"], "--import")
    # Like `python -m`, the current folder is importable, so that a recipe can name the user's
    # own modules (`model: nets:MyNet`, `imports: [my_losses]`). Appended, not prepended: a
    # stray file here must not shadow an installed package.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    # A hub lookup from a dependency must fail fast instead of hanging: crossdistill is offline.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not debug:  # Hugging Face's "Loading weights" / download bars (read at their import)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if state["imports"]:
        from crossdistill.registry import import_modules

        import_modules(state["imports"], "--import")


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    """A two-column table of ``metrics`` on stderr (tables inside them, such as per-class
    scores, are left to the JSON)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if not isinstance(value, (dict, list)):
            table.add_row(key, number(value) if isinstance(value, float) else str(value))
    console.print(table)


def number(value: float) -> str:
    """A metric for a table: four decimals, or scientific notation where four decimals would
    hide it (``4.8e-06``, not ``0.0000``) or run long."""
    if value == 0 or 1e-3 <= abs(value) < 1e6 or value != value:  # value != value: NaN
        return f"{value:.4f}"
    return f"{value:.4g}"


def key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` items (values parsed as YAML) as a dict; a malformed one names the flag."""
    from crossdistill.config import apply_override

    params: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item or item.startswith("="):
            from crossdistill.errors import ConfigError

            raise ConfigError(f"{flag} {item!r} is not KEY=VALUE", hint=f"e.g. {flag} path=a.txt")
        apply_override(params, item)
    return params


def overrides(items: list[str] | None, extra: list[str]) -> list[str]:
    """The ``--set`` items of a command, checked: each one is ``KEY=VALUE``, and no stray
    argument follows (``--set train.epochs 1`` gives the value as a separate word)."""
    from crossdistill.errors import ConfigError

    items = list(items or [])
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            stray = f" (and {extra[0]!r} came as a separate argument)" if extra else ""
            raise ConfigError(
                f"--set {item!r} is not KEY=VALUE{stray}",
                hint=f"join them with '=': --set {key or 'train.epochs'}="
                f"{extra[0] if extra else 'VALUE'}",
            )
    if extra:
        raise ConfigError(
            f"unexpected argument(s): {' '.join(extra)}",
            hint="an override is one word, KEY=VALUE: e.g. --set train.epochs=1",
        )
    return items


def help_text(command: Callable[..., Any] | None) -> str | None:
    """A command's docstring as ``--help`` shows it: the paragraphs re-flowed (the terminal
    wraps them, not the source's line breaks) and reST's double backticks made single."""
    doc = inspect.getdoc(command) if command is not None else None
    if not doc:
        return None
    paragraphs = (" ".join(p.split()) for p in doc.replace("``", "`").split("\n\n"))
    return "\n\n".join(p for p in paragraphs if p)
