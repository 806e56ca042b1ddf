"""``crossdistill init TEMPLATE DIR``: copy a recipe template shipped in the package.

A template is a folder of ``src/crossdistill/templates/``: a ``recipe.yaml``, often a
``teacher.yaml`` that trains its teacher, a ``README.md`` whose first line names and describes it,
and for ``own-data`` a small Python package of the user's code. Paths in the recipes (teacher
weights, stores, ``runs/``) are relative to the folder the commands run in: run them in DIR.
"""

from __future__ import annotations

import difflib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated

import typer

from crossdistill.cli._app import app, console

SKIP = ("__pycache__",)


def templates() -> dict[str, Traversable]:
    """Every shipped template by name, sorted."""
    root = resources.files("crossdistill") / "templates"
    found = {t.name: t for t in root.iterdir() if t.is_dir() and (t / "recipe.yaml").is_file()}
    return dict(sorted(found.items()))


def description(template: Traversable) -> str:
    """The one-line description: the README's title after ``name:``."""
    title = (template / "README.md").read_text(encoding="utf-8").splitlines()[0]
    return title.lstrip("# ").partition(": ")[2].strip()


def template_files(template: Traversable, prefix: Path = Path()) -> list[tuple[Path, Traversable]]:
    """``(relative path, file)`` of every file in ``template``, caches left out."""
    out: list[tuple[Path, Traversable]] = []
    for entry in sorted(template.iterdir(), key=lambda e: e.name):
        if entry.name in SKIP or entry.name.endswith(".pyc"):
            continue
        if entry.is_dir():
            out += template_files(entry, prefix / entry.name)
        else:
            out.append((prefix / entry.name, entry))
    return out


def copy_template(name: str, directory: Path) -> list[Path]:
    """Copy template ``name`` into ``directory`` (created if missing) and return the files
    written; refuses, writing nothing, when any of them exists already."""
    from crossdistill.errors import ConfigError, UnknownNameError

    known = templates()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        raise UnknownNameError(
            f"no template {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
            hint=f"templates: {', '.join(known)} (crossdistill init --list)",
        )
    files = template_files(known[name])
    existing = [str(directory / rel) for rel, _ in files if (directory / rel).exists()]
    if existing:
        raise ConfigError(
            f"init {name}: {len(existing)} file(s) exist already in {directory}: "
            + ", ".join(existing),
            hint="choose a new or empty folder, or move those files away; init never overwrites",
        )
    written = []
    for rel, source in files:
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as out:  # "x": a file that appeared meanwhile is not overwritten
            out.write(source.read_bytes())
        written.append(target)
    return written


@app.command()
def init(
    template: Annotated[str | None, typer.Argument(help="a template name (see --list)")] = None,
    directory: Annotated[
        Path | None, typer.Argument(help="the folder to copy it into (created if missing)")
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the templates and exit")] = False,
) -> None:
    """Start a project from a recipe template: crossdistill init digits-kd my_project."""
    if list_:
        known = templates()
        width = max(map(len, known))
        for name, folder in known.items():
            typer.echo(f"{name:<{width}}  {description(folder)}")
        return
    if template is None or directory is None:
        from crossdistill.errors import ConfigError

        raise ConfigError(
            "init needs a TEMPLATE and a DIR",
            hint="e.g. crossdistill init digits-kd my_project; crossdistill init --list",
        )
    written = copy_template(template, directory)
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    first = "teacher.yaml" if any(p.name == "teacher.yaml" for p in written) else "recipe.yaml"
    console.print(
        f"next: cd {directory} && crossdistill run {first} (see README.md)", highlight=False
    )
