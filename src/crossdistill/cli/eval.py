"""``crossdistill eval [--suite NAME] TARGET [--OPTION VALUE ...]``: any registered evaluation
suite. Each suite declares its options (``crossdistill list suites`` lists them). Every suite's
result is printed the same way, by :func:`render_result`: tables on stdout (``--json`` prints the
JSON instead); the whole result is written as JSON next to the target (or to ``--out``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from crossdistill.cli._app import app, console, number


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
    as_json: Annotated[
        bool, typer.Option("--json", help="print the result as one line of JSON, not tables")
    ] = False,
) -> None:
    """Evaluate TARGET with a suite; its options follow as --name VALUE (--flag for yes/no;
    `crossdistill list suites` shows each suite's). Every suite prints the same tables; the
    whole result is written as JSON (TARGET/eval-<name>.json or --out)."""
    from crossdistill.suites import SUITES
    from crossdistill.suites.base import run_suite

    options = _options(ctx.args, SUITES.build(suite, where="--suite"), suite)
    _, result, written = run_suite(suite, target, out, **options)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        title = f"{suite}: {Path(target).name or target}"
        render_result(result, title, Console(width=max(Console().width, 100)))
    if written is not None:
        console.print(f"wrote {written}")


def render_result(result: dict[str, Any], title: str, to: Console) -> None:
    """Any suite's result as tables, one style for all: a ``metric | value`` table of its
    numbers and strings (nested sections flattened to ``section/metric`` rows), and one table
    per section of records (a dict of dicts, such as per-class or per-task scores: a row per
    key, a column per metric). Floats go through :func:`~crossdistill.cli._app.number`; lists
    are counted (their items are in the JSON)."""
    main = Table(title=title)
    main.add_column("metric")
    main.add_column("value", justify="right")
    sections: list[Table] = []
    for key, value in result.items():
        if _records(value):
            sections.append(_record_table(key, value))
        else:
            for name, cell in _flat(key, value):
                main.add_row(name, cell)
    for table in (main, *sections):
        if table.row_count:
            to.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return number(value)
    if isinstance(value, (list, tuple)):
        return f"{len(value)} items (in the JSON)"
    return "-" if value is None else str(value)


def _flat(key: str, value: Any) -> Iterator[tuple[str, str]]:
    """``key``'s rows: a nested dict flattened to ``key/inner`` names."""
    if isinstance(value, dict):
        for inner, item in value.items():
            yield from _flat(f"{key}/{inner}", item)
    else:
        yield key, _cell(value)


def _records(value: Any) -> bool:
    """A section of records: a non-empty dict whose values are all dicts."""
    return (
        isinstance(value, dict) and bool(value) and all(isinstance(v, dict) for v in value.values())
    )


def _record_table(title: str, records: dict[str, dict[str, Any]]) -> Table:
    columns = list(dict.fromkeys(name for r in records.values() for name, _ in _flat("", r)))
    table = Table(title=title)
    table.add_column("")
    for column in columns:
        table.add_column(column.removeprefix("/"), justify="right")
    for key, record in records.items():
        cells = dict(_flat("", record))
        table.add_row(str(key), *(cells.get(c, "") for c in columns))
    return table


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
