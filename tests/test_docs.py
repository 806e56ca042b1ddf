"""The docs site: it builds with ``mkdocs build --strict`` (no broken link, anchor or API
reference), its generated reference pages cover every recipe key, plug-in and public name, the
Python examples on its front page and in the README run, and the README links every page."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pydantic
import pytest
import torch

import crossdistill
from crossdistill import config

ROOT = Path(__file__).resolve().parent.parent
DOCS_EXTRA = "pip install 'mkdocs-material>=9' 'mkdocstrings[python]>=0.24'  (or .[docs])"


def _gen() -> types.ModuleType:
    """``scripts/gen_docs.py``, the mkdocs hook that generates the reference pages."""
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> types.ModuleType:
    return _gen()


def _config_models() -> list[type[pydantic.BaseModel]]:
    """Every pydantic model defined in crossdistill.config (walked here, not by the generator)."""
    return [
        obj
        for obj in vars(config).values()
        if isinstance(obj, type)
        and issubclass(obj, pydantic.BaseModel)
        and obj.__module__ == config.__name__
        and obj.model_fields
    ]


def _sections(page: str) -> dict[str, str]:
    """Model name -> its section of the recipe reference."""
    out: dict[str, str] = {}
    for part in re.split(r"^## ", page, flags=re.M)[1:]:
        found = re.search(r"Model: `crossdistill\.config\.(\w+)`", part)
        assert found, f"a section without its model: {part[:80]!r}"
        out[found.group(1)] = part
    return out


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: {DOCS_EXTRA}")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the generated pages are in the site, and the API reference rendered real objects
    recipe = (site / "reference" / "recipe" / "index.html").read_text()
    assert "checkpoint_every_steps" in recipe
    plugins = (site / "reference" / "plugins" / "index.html").read_text()
    assert 'id="losses-kd"' in plugins
    api = (site / "reference" / "api" / "index.html").read_text()
    assert 'id="crossdistill.runs.Run.student"' in api and 'id="crossdistill.api.distill"' in api
    assert ":func:" not in api and "``" not in api  # reST roles became code (griffe extension)
    assert (site / "benchmarks" / "index.html").is_file()
    assert (site / "examples" / "animals" / "index.html").is_file()


def test_recipe_reference_names_every_field_of_every_config_model(gen: types.ModuleType) -> None:
    sections = _sections(gen.recipe_reference())
    models = _config_models()
    assert {"Recipe", "DataSpec", "TrainSpec", "StoreKeySpec", "TapSpec"} <= {
        m.__name__ for m in models
    }
    for model in models:
        assert model.__name__ in sections, f"{model.__name__} has no section"
        rows = {
            row.split("|")[1].strip().strip("`"): row
            for row in sections[model.__name__].splitlines()
            if row.startswith("| `")
        }
        for name, field in model.model_fields.items():
            assert name in rows, f"{model.__name__}.{name} is not in the recipe reference"
            cells = re.split(r"(?<!\\)\|", rows[name])  # key, type, default, constraints, text
            assert len(cells) == 7, rows[name]
            description = cells[5].strip()
            assert description, (
                f"{model.__name__}.{name} has no description: give it Field(description=...) "
                "or a comment in config.py, or a line in NOTES of scripts/gen_docs.py"
            )
            if field.is_required():
                assert "**required**" in rows[name]


def test_recipe_reference_states_types_defaults_and_constraints(gen: types.ModuleType) -> None:
    train = _sections(gen.recipe_reference())["TrainSpec"]
    row = next(r for r in train.splitlines() if r.startswith("| `amp`"))
    assert '"auto" \\| "off" \\| "bf16" \\| "fp16"' in row and "`'auto'`" in row
    data = _sections(gen.recipe_reference())["DataSpec"]
    row = next(r for r in data.splitlines() if r.startswith("| `batch_size`"))
    assert "`128`" in row and f"> 0, ≤ {config.MAX_SIZE}" in row
    # a nested model links to its own section
    recipe = _sections(gen.recipe_reference())["Recipe"]
    assert "[TrainSpec](#train)" in recipe and "{#train}" in gen.recipe_reference()


def test_field_comments_are_descriptions(gen: types.ModuleType) -> None:
    class Spec(pydantic.BaseModel):
        # the first line above
        # and the second
        a: int = 1
        b: str = "x"  # beside b
        c: tuple[int, int] = (
            1,
            2,
        )  # beside a multi-line field
        d: bool = True

    assert gen._field_comments(Spec) == {
        "a": "the first line above and the second",
        "b": "beside b",
        "c": "beside a multi-line field",
    }


def test_a_stale_note_fails_the_build(gen: types.ModuleType, monkeypatch) -> None:
    monkeypatch.setitem(gen.NOTES, "TrainSpec.no_such_key", "gone")
    with pytest.raises(RuntimeError, match=r"TrainSpec\.no_such_key"):
        gen.recipe_reference()


def test_registry_reference_lists_every_plugin_with_its_parameters(
    gen: types.ModuleType,
) -> None:
    from crossdistill.cli.list import KINDS
    from crossdistill.losses import LOSSES
    from crossdistill.registry import import_object

    page = gen.registry_reference()
    for kind, ref in KINDS.items():
        assert f"## {kind}\n" in page
        for name in import_object(ref, "test").names():
            assert f"### `{name}` {{#{kind}-{gen._slug(name)}}}" in page, f"{kind} {name}"
    kd = page.split("### `kd` ", 1)[1].split("\n### ", 1)[0]
    temperature = inspect.signature(LOSSES.get("kd")).parameters["temperature"].default
    assert f"| `temperature` | float | `{temperature!r}` |" in kd


def test_api_reference_documents_every_public_name(gen: types.ModuleType) -> None:
    page = gen.api_reference()
    for name in crossdistill.__all__:
        if name == "__version__":
            continue
        module = crossdistill._PUBLIC[name]
        assert f"::: {module}.{name}\n" in page, name
        assert hasattr(importlib.import_module(module), name)


def test_benchmarks_page_holds_full_runs_only(gen: types.ModuleType) -> None:
    page = gen.benchmarks_page()
    results = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    full = [p for p in results if not p.name.endswith(".quick.md")]
    assert full and len(full) < len(results)  # there are quick results to leave out
    for path in results:
        named = f"`benchmarks/results/{path.name}`" in page
        assert named == (path in full), path.name


def test_index_example_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    text = (ROOT / "docs" / "index.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, flags=re.S)
    assert code, "docs/index.md has no Python example"
    assert len(code.group(1).splitlines()) <= 25
    monkeypatch.chdir(tmp_path)  # its run folder goes under tmp_path
    exec(compile(code.group(1), "docs/index.md", "exec"), {"__name__": "__docs__"})
    accuracy, agreement = map(float, capsys.readouterr().out.split())
    assert 0.0 <= accuracy <= 1.0 and 0.0 <= agreement <= 1.0
    run = tmp_path / "runs" / "digits_kd"
    assert (run / "student.safetensors").is_file() and (run / "eval.json").is_file()
    assert crossdistill.Run(run).student() is not None


def test_readme_example_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    """The README's one Python example, as printed: a CNN teacher, an MLP student, a run folder
    that reopens without the objects that made it."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "the README holds one Python example"
    assert len(blocks[0].splitlines()) <= 25
    monkeypatch.chdir(tmp_path)  # its run folder goes under tmp_path
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    accuracy, agreement = map(float, capsys.readouterr().out.split())
    assert 0.0 <= accuracy <= 1.0 and 0.0 <= agreement <= 1.0
    run = tmp_path / "runs" / "digits_mlp"
    assert (run / "student.safetensors").is_file() and (run / "eval.json").is_file()
    reopened = namespace["reopened"].model  # rebuilt from the folder, with the trained weights
    trained = namespace["student"]
    assert type(reopened) is type(trained)
    for a, b in zip(reopened.state_dict().values(), trained.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())


def _github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading (lower case, punctuation dropped, each space a '-')."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_every_docs_page_and_every_link_resolves() -> None:
    """The README is the way in: it links each hand-written page of docs/, and every relative
    link in it names a file that exists and, with ``#anchor``, a heading of that page whose
    anchor GitHub and mkdocs spell alike."""
    toc = pytest.importorskip("markdown.extensions.toc", reason=f"no markdown: {DOCS_EXTRA}")
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link for link in links if "://" not in link]
    for link in relative:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), f"README links {link}: no such file"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M)
            github = {_github_slug(h) for h in headings}
            mkdocs = {toc.slugify(h, "-") for h in headings}
            assert anchor in github and anchor in mkdocs, f"README links {link}: no such heading"
    linked = {Path(link.partition("#")[0]) for link in relative}
    pages = {p.relative_to(ROOT) for p in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set(), f"docs pages the README does not link: {pages - linked}"


def test_every_environment_variable_is_documented() -> None:
    code = "\n".join(
        p.read_text() for p in (ROOT / "src" / "crossdistill").rglob("*.py") if p.is_file()
    )
    variables = set(re.findall(r"\bCROSSDISTILL_[A-Z_]+\b", code))
    assert "CROSSDISTILL_CACHE" in variables
    pages = "\n".join(p.read_text() for p in (ROOT / "docs").rglob("*.md"))
    missing = sorted(v for v in variables if f"`{v}`" not in pages)
    assert not missing, f"environment variables not in docs/: {missing}"


def test_cells_keep_braces_pipes_and_code(gen: types.ModuleType) -> None:
    # a trailing {…} would be taken by attr_list, a | would end the table cell
    assert gen._cell("as {name, params}") == "as \\{name, params\\}"
    assert gen._cell("a | b, `{x}`") == "a \\| b, `{x}`"


def test_rst_roles_become_markdown_code() -> None:
    pytest.importorskip("griffe", reason=f"griffe is not installed: {DOCS_EXTRA}")
    spec = importlib.util.spec_from_file_location(
        "griffe_rst_roles", ROOT / "scripts" / "griffe_rst_roles.py"
    )
    assert spec is not None and spec.loader is not None
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    text = "Returns a :class:`~crossdistill.runs.Run`; see :func:`distill` and ``x=1``."
    assert roles.markdown(text) == "Returns a `Run`; see `distill` and `x=1`."
