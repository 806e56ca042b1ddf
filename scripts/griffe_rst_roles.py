"""A griffe extension for the docs site's API reference: the docstrings are reST-flavoured
(``:func:`distill```, ``:class:`~crossdistill.runs.Run```, double-backtick literals), which
mkdocstrings would print literally; this turns them into Markdown code spans.

Loaded by ``mkdocs.yml`` (mkdocstrings' python handler, ``extensions:``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# :func:`x`, :class:`~a.b.C` (the ~ shows the last part only), :meth:`C.m` ...
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj):`~?([^`]+)`")


def markdown(text: str) -> str:
    """``text`` with reST roles and double-backtick literals as Markdown code spans."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        shown = target.rsplit(".", 1)[-1] if match.group(0).count("~") else target
        return f"`{shown}`"

    return _ROLE.sub(role, text).replace("``", "`")


class RSTRoles(griffe.Extension):
    """Rewrites every docstring of the objects griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
