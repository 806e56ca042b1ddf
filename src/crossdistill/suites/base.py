"""The :class:`Suite` interface and its registry.

A suite evaluates a *target* (a run directory, or for some suites a model folder or a registered
model name) and returns a JSON-able dict. It declares its options as a pydantic model, so that
``crossdistill eval`` takes them as ``--name value`` flags (``--quick`` for a bool) and refuses
the ones it does not declare. The CLI prints every suite's result the same way
(``crossdistill.cli.eval.render_result``), so a suite only returns its numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pydantic

from crossdistill._util.files import write_json
from crossdistill._util.validation import format_validation_error
from crossdistill.errors import ConfigError
from crossdistill.registry import Registry, plugin_name
from crossdistill.runs import Run


class NoOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class Suite:
    """One evaluation suite, registered with ``@SUITES.register("name")``.

    Subclasses set ``Options`` (a pydantic model with ``extra="forbid"``; each field is a
    ``--field`` flag), implement :meth:`run`, and may override :meth:`result_name` (the
    ``eval-<name>.json`` a run directory keeps the result in).
    """

    Options: ClassVar[type[pydantic.BaseModel]] = NoOptions

    def options(self, given: dict[str, Any]) -> Any:
        """``given`` (flag name → value) validated as this suite's options."""
        try:
            return self.Options.model_validate(given)
        except pydantic.ValidationError as exc:
            raise ConfigError(
                f"bad options for --suite {plugin_name(self)}:\n"
                + format_validation_error(exc, model=self.Options),
                hint=f"--suite {plugin_name(self)} takes: {option_list(self)}",
            ) from None

    def run(self, target: str, options: Any) -> dict[str, Any]:
        raise NotImplementedError

    def result_name(self, target: str, options: Any) -> str:
        """The ``<name>`` of ``eval-<name>.json`` (a suite named by import path: its class)."""
        return vars(type(self)).get("plugin_name") or type(self).__name__.lower()


SUITES: Registry[type[Suite]] = Registry("evaluation suite", base=Suite, returns=Suite)


def option_list(suite: Suite) -> str:
    flags = [f"--{name.replace('_', '-')}" for name in suite.Options.model_fields]
    return ", ".join(flags) or "no options"


def run_suite(
    suite: str, target: str | Path, out: str | Path | None = None, **options: Any
) -> tuple[Suite, dict[str, Any], Path | None]:
    """Run ``suite`` on ``target`` with ``options`` (validated against its ``Options``), and
    write the result to ``out`` or, when the target is a folder (a run, a model), to its
    ``eval-<name>.json``, atomically. Returns the suite, the result and where it went."""
    runner: Suite = SUITES.build(suite, where="--suite")
    opts = runner.options(options)
    result = runner.run(str(target), opts)
    if out is None and Path(target).is_dir():  # a run, or a model folder
        out = Run(target).eval_file(runner.result_name(str(target), opts))
    if out is not None:
        write_json(Path(out), result, indent=2)
    return runner, result, None if out is None else Path(out)


def evaluate(
    suite: str, target: str | Path, out: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """The result of ``suite`` on ``target`` (written as :func:`run_suite` says)."""
    return run_suite(suite, target, out, **options)[1]
