"""Packaging and import hygiene: what a wheel ships, what importing does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from conftest import CLI_ENV

SRC = Path(__file__).resolve().parent.parent / "src" / "crossdistill"


def test_every_package_folder_has_an_init() -> None:
    """setuptools' find_packages skips folders without __init__.py: a wheel would lack them."""
    folders = {p.parent for p in SRC.rglob("*.py")}
    missing = sorted(str(f.relative_to(SRC)) for f in folders if not (f / "__init__.py").exists())
    assert missing == []


def test_import_has_no_global_side_effects() -> None:
    code = (
        "import os, torch; threads = torch.get_num_threads(); env = dict(os.environ); "
        "det = torch.are_deterministic_algorithms_enabled(); import crossdistill; "
        "assert torch.get_num_threads() == threads; assert dict(os.environ) == env; "
        "assert torch.are_deterministic_algorithms_enabled() == det; "
        "import sys; assert 'sentence_transformers' not in sys.modules; print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE",)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ------------------------------------------------------------------- version, templates, init

ROOT = SRC.parent.parent
TEMPLATES = SRC / "templates"
IGNORED = ("__pycache__", "*.pyc", "*.egg-info")
TEMPLATE_NAMES = sorted(p.name for p in TEMPLATES.iterdir() if (p / "recipe.yaml").is_file())
# template file -> the working recipe it was made from (the two must not drift apart)
FROM_RECIPE = {
    "digits-kd/teacher.yaml": "digits/teacher.yaml",
    "digits-kd/recipe.yaml": "digits/kd.yaml",
    "cnn-to-vit/teacher.yaml": "fashion_mnist/teacher.yaml",
    "cnn-to-vit/recipe.yaml": "fashion_mnist/cnn_to_vit.yaml",
    "text-static/recipe.yaml": "text/static_distill.yaml",
    "cross-encoder-to-dual/teacher.yaml": "fusion_to_dual/cross_encoder.yaml",
    "cross-encoder-to-dual/recipe.yaml": "fusion_to_dual/margin_mse.yaml",
    "speech-from-text/recipe.yaml": "speech_from_text/cosine.yaml",
}


def _template_files() -> set[str]:
    return {
        str(p.relative_to(SRC))
        for p in TEMPLATES.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def _body(path: Path) -> str:
    """A recipe from its ``name:`` line on: the header comments name other commands."""
    text = path.read_text()
    return text[text.index("\nname:") :]


def test_version_option_prints_the_package_version_without_torch() -> None:
    from importlib.metadata import version

    from crossdistill import __version__

    code = (
        "import sys\nfrom crossdistill.cli import main\nsys.argv = ['crossdistill', '--version']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('torch' in sys.modules, code in (0, None), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout == f"crossdistill {__version__}\n"
    assert out.stderr.split() == ["False", "True"]  # no torch import; exit status 0
    assert version("crossdistill") == __version__  # the build reads _version.py


def test_the_templates_are_the_expected_six() -> None:
    assert TEMPLATE_NAMES == [
        "cnn-to-vit",
        "cross-encoder-to-dual",
        "digits-kd",
        "own-data",
        "speech-from-text",
        "text-static",
    ]
    for name in TEMPLATE_NAMES:
        assert (TEMPLATES / name / "README.md").read_text().startswith(f"# {name}: ")


def test_every_template_recipe_validates() -> None:
    from crossdistill.config import load_recipe

    recipes = sorted(TEMPLATES.glob("*/*.yaml"))
    assert {p.parent.name for p in recipes} == set(TEMPLATE_NAMES)
    for path in recipes:
        load_recipe(path)  # raises ConfigError naming the file


def test_templates_equal_the_working_recipes_they_come_from() -> None:
    for template, recipe in FROM_RECIPE.items():
        assert _body(TEMPLATES / template) == _body(ROOT / "recipes" / recipe), template


def test_package_data_ships_every_template_file() -> None:
    """Every file under templates/ matches a package-data glob of pyproject.toml (a new kind of
    file would otherwise be left out of the wheel silently)."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["crossdistill"]
    shipped = {str(p.relative_to(SRC)) for g in globs for p in SRC.glob(g) if p.is_file()}
    assert _template_files() - shipped == set()


def test_init_list_names_every_template_with_a_description(cli, tmp_path: Path) -> None:
    out = cli(["init", "--list"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [line.split(None, 1) for line in out.stdout.splitlines()]
    assert [r[0] for r in rows] == TEMPLATE_NAMES
    assert all(len(r) == 2 and len(r[1]) > 20 for r in rows)


def test_init_copies_a_template_and_refuses_to_overwrite(cli, flat, tmp_path: Path) -> None:
    out = cli(["init", "own-data", "proj"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    copied = {str(p.relative_to(tmp_path / "proj")) for p in (tmp_path / "proj").rglob("*.*")}
    assert copied == {
        "README.md",
        "recipe.yaml",
        "teacher.yaml",
        "my_pkg/__init__.py",
        "my_pkg/data.py",
    }
    assert (tmp_path / "proj/recipe.yaml").read_bytes() == (
        TEMPLATES / "own-data/recipe.yaml"
    ).read_bytes()
    # one file of the template exists: nothing is written, and that file is named
    (tmp_path / "again").mkdir()
    (tmp_path / "again/teacher.yaml").write_text("mine")
    out = cli(["init", "own-data", "again"], cwd=tmp_path)
    assert out.returncode == 2
    assert "again/teacher.yaml" in flat(out.stderr) and "hint:" in out.stderr
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["teacher.yaml"]
    assert (tmp_path / "again/teacher.yaml").read_text() == "mine"
    out = cli(["init", "digit", "x"], cwd=tmp_path)
    assert out.returncode == 2 and "did you mean 'digits-kd'" in flat(out.stderr)
    assert not (tmp_path / "x").exists()


def test_own_data_template_runs_from_its_folder(cli, tmp_path: Path) -> None:
    """The own-data template's data source is found by import path from the folder it runs in."""
    assert cli(["init", "own-data", "p"], cwd=tmp_path).returncode == 0
    one = ["--set", "train.epochs=1", "--set", "train.progress=false"]
    for recipe in ("teacher.yaml", "recipe.yaml"):
        out = cli(["run", recipe, *one], cwd=tmp_path / "p")
        assert out.returncode == 0, out.stderr
    assert (tmp_path / "p/runs/my_student/student.safetensors").is_file()


def test_digits_template_runs(digits_teacher_run: Path, tmp_path: Path) -> None:
    from crossdistill.config import load_recipe
    from crossdistill.pipeline import run_recipe

    recipe = load_recipe(
        TEMPLATES / "digits-kd/recipe.yaml",
        overrides=[
            f"teacher.weights={digits_teacher_run / 'student.safetensors'}",
            f"output.dir={tmp_path}",
            "train.epochs=1",
            "train.progress=false",
        ],
    )
    result = run_recipe(recipe)
    assert (result.run_dir / "student.safetensors").is_file()


# ------------------------------------------------------------------- the wheel, outside the repo


def _site_packages(venv: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))


def test_built_wheel_installs_and_works_outside_the_repo(tmp_path: Path, flat) -> None:
    """Build the wheel, install it into a fresh venv outside the repository, and run ``init``,
    a one-epoch ``run`` and ``export`` there.

    Isolation: the wheel is built from a copy of ``src/``, ``pyproject.toml`` and ``README.md``
    (``pip wheel --no-deps --no-build-isolation``: offline, setuptools from this venv). The new
    venv is made ``--without-pip`` by this interpreter; crossdistill goes into its
    site-packages from the wheel (``pip install --no-deps --target``). Its dependencies come
    from this ``.venv``: a ``.pth`` file in the new site-packages names the ``.venv``'s
    site-packages as a plain path, so the ``.pth`` files there — the editable install's
    ``__editable__.crossdistill-*.pth``, which puts ``src/`` on the path — are not processed.
    PYTHONPATH is dropped and every command runs in a folder outside the repository; the test
    checks that ``crossdistill`` imports from the new site-packages and that no path of the
    repository or editable finder is visible.
    """
    tree, dist, venv, work = (tmp_path / d for d in ("tree", "dist", "venv", "work"))
    shutil.copytree(SRC.parent, tree / "src", ignore=shutil.ignore_patterns(*IGNORED))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist)]
    subprocess.run([*pip, *build, str(tree)], check=True, capture_output=True)
    (wheel,) = dist.glob("crossdistill-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {n for n in _template_files() if f"crossdistill/{n}" not in names} == set()
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = _site_packages(venv)
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True
    )
    deps = Path(sysconfig.get_paths()["purelib"])  # this .venv's site-packages
    (site / "_deps.pth").write_text(f"{deps}\n")
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in CLI_ENV.items() if k != "PYTHONPATH"}
    work.mkdir()

    def run(*args: str, cwd: Path = work) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stderr
        return out

    where = (
        "import sys, crossdistill, importlib.metadata as m; print(crossdistill.__file__); "
        "print(m.version('crossdistill')); "
        "print([e.value for e in m.entry_points(group='console_scripts', name='crossdistill')]); "
        "print(any('editable' in repr(f) for f in sys.meta_path)); "
        f"print([p for p in sys.path if p.startswith({str(ROOT)!r}) and p != {str(deps)!r}])"
    )
    file, version, scripts, editable, repo_paths = run("-c", where).stdout.splitlines()
    assert Path(file).is_relative_to(site) and not Path(file).is_relative_to(ROOT)
    from crossdistill import __version__

    assert version == __version__
    assert scripts == "['crossdistill.cli:main']"
    assert (editable, repo_paths) == ("False", "[]")

    assert run("-m", "crossdistill", "--version").stdout == f"crossdistill {__version__}\n"
    run("-m", "crossdistill", "init", "digits-kd", "proj")
    proj = work / "proj"
    one = ["--set", "train.epochs=1", "--set", "train.progress=false"]
    run("-m", "crossdistill", "run", "teacher.yaml", *one, cwd=proj)
    run("-m", "crossdistill", "run", "recipe.yaml", *one, cwd=proj)
    out = run("-m", "crossdistill", "export", "runs/digits_kd", "--format", "safetensors", cwd=proj)
    exported = proj / "runs/digits_kd/export/safetensors"
    assert any(exported.glob("*.safetensors")), flat(out.stderr)
