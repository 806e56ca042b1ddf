"""``crossdistill eval [--suite NAME] TARGET [--OPTION VALUE ...]``: any registered evaluation
suite. Each suite declares its options (``crossdistill list suites`` lists them) and renders
its own result; the result is printed as one line of JSON and written next to the target (or to
``--out``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from crossdistill.cli._app import app, console


@app.command(
    "eval",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def eval_(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="a finished run directory; for some suites also a model folder or a "
            "registered model name (e.g. minilm)"
        ),
    ],
    suite: Annotated[
        str,
        typer.Option(help="a registered suite (crossdistill list suites) or package.module:Class"),
    ] = "task",
    out: Annotated[
        Path | None, typer.Option(help="JSON file (default: TARGET/eval-<name>.json)")
    ] = None,
) -> None:
    """Evaluate TARGET with a suite; its options follow as --name VALUE (--flag for yes/no;
    `crossdistill list suites` shows each suite's)."""
    from crossdistill.suites import SUITES
    from crossdistill.suites.base import run_suite

    options = _options(ctx.args, SUITES.build(suite, where="--suite"), suite)
    runner, result, written = run_suite(suite, target, out, **options)
    runner.render(result, console)
    if written is not None:
        console.print(f"wrote {written}")
    typer.echo(json.dumps(result))


def _options(args: list[str], runner: Any, suite: str) -> dict[str, Any]:
    """``--name value`` / ``--flag`` / ``--no-flag`` pairs checked against the suite's options;
    an option another suite takes is named as misplaced."""
    from crossdistill.errors import ConfigError
    from crossdistill.suites import SUITES
    from crossdistill.suites.base import option_list

    fields = runner.Options.model_fields
    given: dict[str, Any] = {}
    i = 0
    while i < len(args):
        flag = args[i]
        name = flag.removeprefix("--").replace("-", "_")
        negated = name.startswith("no_") and name[3:] in fields
        key = name[3:] if negated else name
        if not flag.startswith("--") or key not in fields:
            takers = [n for n in SUITES.names() if key in SUITES.get(n).Options.model_fields]
            raise ConfigError(
                f"{flag} does not apply to --suite {suite}"
                if flag.startswith("--")
                else f"unexpected argument {flag!r}",
                hint=f"--suite {suite} takes: {option_list(runner)}"
                + (f"; {flag} is for --suite {'/'.join(takers)}" if takers else ""),
            )
        if fields[key].annotation is bool:
            given[key] = not negated
            i += 1
        elif i + 1 >= len(args):
            raise ConfigError(f"{flag} needs a value")
        else:
            given[key] = args[i + 1]
            i += 2
    return given
