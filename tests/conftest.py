"""Shared fixtures: offline hub, one intra-op thread, and the digits teacher trained once.

The digits recipes (``recipes/digits/``) train in about a second each on one CPU thread. The
teacher is trained once per session (:func:`digits_teacher_run`); tests that need a KD run build
it from :func:`kd_recipe`, whose teacher weights point at that session run.
"""

from __future__ import annotations

import os

# Set before anything imports a hub client: the test suite never touches the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import hashlib
import json
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crossdistill.config import Recipe, load_recipe
from crossdistill.pipeline import run_recipe
from crossdistill.runs import Run
from crossdistill.train.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
DIGITS = RECIPES / "digits"

# Child processes: one intra-op thread (the models are tiny; more threads only contend on a busy
# machine), wide lines so rich does not wrap messages, offline hub.
CLI_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "COLUMNS": "400",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """Tiny models: a second intra-op thread only adds contention (and timing noise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _wordnet_sentences_parsed_once():
    """``read_sentences`` parses all of WordNet (~1.5 s) on every call, even for 64 sentences,
    and the text recipes, stores and exports call it a few times each (~40 s of the recipe
    tests). Within the session each WordNet folder is parsed once: a call returns fresh lists
    equal to what the parser returns, and a changed file (another size or mtime) is parsed anew.
    Tests that import ``read_sentences`` by name call the parser itself."""
    from crossdistill.domains.text import sentences

    parse = sentences.read_sentences
    parsed: dict[tuple, dict[str, tuple[list[str], list[int]]]] = {}

    def read_sentences(root=sentences.DEFAULT_ROOT, include=sentences.KINDS):
        files = sorted(Path(root).glob("data.*"))
        key = (
            str(Path(root).resolve()),
            (include,) if isinstance(include, str) else tuple(include),
            tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files),
        )
        if key not in parsed:
            parsed[key] = parse(root, include)
        return {split: (list(t), list(n)) for split, (t, n) in parsed[key].items()}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sentences, "read_sentences", read_sentences)
        yield


# ------------------------------------------------------------------------------- digits runs


@pytest.fixture(scope="session")
def digits_teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``recipes/digits/teacher.yaml`` trained once per session; returns its run directory.

    Treat it as read-only: several tests read its ``student.safetensors``.
    """
    out = tmp_path_factory.mktemp("teacher_runs")
    recipe = load_recipe(
        DIGITS / "teacher.yaml", overrides=[f"output.dir={out}", "train.progress=false"]
    )
    result = run_recipe(recipe)
    assert result.run_dir is not None
    assert (result.run_dir / "student.safetensors").is_file()
    return result.run_dir


@pytest.fixture
def teacher_weights(digits_teacher_run: Path) -> Path:
    return digits_teacher_run / "student.safetensors"


@pytest.fixture
def kd_recipe(tmp_path: Path, digits_teacher_run: Path) -> Recipe:
    """``recipes/digits/kd.yaml`` with the session teacher and its output under ``tmp_path``."""
    return load_recipe(
        DIGITS / "kd.yaml",
        overrides=[
            f"teacher.weights={digits_teacher_run / 'student.safetensors'}",
            f"output.dir={tmp_path / 'runs'}",
            "train.progress=false",
        ],
    )


# ------------------------------------------------------------------------------- helpers


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m crossdistill ARGS`` in ``cwd``; text stdout/stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "crossdistill", *args],
        cwd=cwd,
        env=CLI_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess]:
    return run_cli


# A command line forked from a process that has already imported what every command imports:
# each ``python -m crossdistill`` otherwise spends seconds of CPU importing torch before it does
# anything.
# The fork is still a process of its own (exit code, stdout/stderr, cwd, sys.path[0] = cwd as
# under ``-m``, state that dies with it). Children share the server's imports and its hash seed:
# tests of what a fresh interpreter imports, of results that must not depend on the hash seed
# (reproducible across processes), of environment variables read at start-up (PYTHONPATH), of
# signals sent to a pid, or of the installed entry point keep using ``run_cli``. The server
# also keeps the source it imported: code edited during a session is not seen by its children.
_FORK_SERVER = r"""
import atexit, json, os, runpy, sys, threading

# What a command imports before it reads its arguments' files; plug-ins stay for the child to
# load, so that a command that forgot to load them fails here as it would for a user.
import crossdistill.cli, crossdistill.pipeline  # noqa: F401


def exit_like_python(code):
    # What the interpreter does at exit, less the teardown of every module: that teardown
    # touches the whole inherited heap (copy-on-write) and took ~5 s per forked child.
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def child(job):
    try:
        run(job)
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            exit_like_python(code or 0)
        print(code, file=sys.stderr)
        exit_like_python(1)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        exit_like_python(1)
    exit_like_python(0)


def run(job):
    os.chdir(job["cwd"])
    for fd, path, flags in (
        (0, os.devnull, os.O_RDONLY),
        (1, job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        target = os.open(path, flags, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.stdin = open(0, closefd=False)  # not the server's request pipe
    sys.path[0] = os.getcwd()  # as `python -m` sets it
    sys.argv = ["crossdistill", *job["args"]]
    runpy.run_module("crossdistill", run_name="__main__", alter_sys=True)


for line in sys.stdin:
    batch = json.loads(line)
    jobs, running, codes = list(batch["jobs"]), {}, {}
    while jobs or running:
        while jobs and len(running) < batch["workers"]:
            job = jobs.pop(0)
            assert threading.active_count() == 1, "fork with threads running"
            pid = os.fork()
            if pid == 0:
                child(job)
            running[pid] = job["id"]
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    print(json.dumps(codes), flush=True)
"""


class ForkedCli:
    """Runs batches of command lines, each in a process forked from one warm server."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.server = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER],
            cwd=scratch,
            env=CLI_ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a timeout kills the server and its children together
        )
        self.count = 0

    def many(
        self, commands: list[tuple[list[str], Path]], workers: int = 1, timeout: float = 600
    ) -> list[subprocess.CompletedProcess]:
        """Each ``(args, cwd)`` as ``python -m crossdistill ARGS`` in ``cwd``, ``workers`` at
        a time; results in order, like :func:`run_cli`'s."""
        jobs = []
        for args, cwd in commands:
            self.count += 1
            out = self.scratch / f"{self.count}"
            jobs.append({"id": str(self.count), "args": [str(a) for a in args], "cwd": str(cwd),
                         "stdout": f"{out}.out", "stderr": f"{out}.err"})  # fmt: skip
        assert self.server.stdin is not None and self.server.stdout is not None
        self.server.stdin.write(json.dumps({"jobs": jobs, "workers": workers}) + "\n")
        self.server.stdin.flush()
        ready, _, _ = select.select([self.server.stdout], [], [], timeout)
        if not ready:
            self.close()
            raise subprocess.TimeoutExpired([job["args"] for job in jobs], timeout)
        line = self.server.stdout.readline()
        if not line:
            raise RuntimeError(f"the CLI fork server died (exit code {self.server.wait()})")
        codes = json.loads(line)
        return [
            subprocess.CompletedProcess(
                [sys.executable, "-m", "crossdistill", *args],
                codes[job["id"]],
                Path(job["stdout"]).read_text(),
                Path(job["stderr"]).read_text(),
            )
            for (args, _), job in zip(commands, jobs, strict=True)
        ]

    def __call__(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        """One command line, like :func:`run_cli`."""
        return self.many([(args, cwd)])[0]

    def close(self) -> None:
        if self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait()


@pytest.fixture(scope="session")
def forked_cli(tmp_path_factory: pytest.TempPathFactory):
    """A :class:`ForkedCli` shared by the session."""
    server = ForkedCli(tmp_path_factory.mktemp("forked_cli"))
    yield server
    server.close()


def rewind_run(run_dir: Path, checkpoint_prefix: str) -> None:
    """Leave a finished run as a crash at its first checkpoint named ``checkpoint_prefix...``
    (``epoch-0001-step``: mid-way through the second epoch) would: the later checkpoints and
    the finished files gone, for ``run_recipe(recipe, resume=True)`` to continue."""
    found = list_checkpoints(Run(run_dir).checkpoints)
    cut = next(i for i, p in enumerate(found) if p.name.startswith(checkpoint_prefix))
    for later in found[cut + 1 :]:
        shutil.rmtree(later)
    for name in ("student.safetensors", "student.json", "eval.json"):
        (run_dir / name).unlink(missing_ok=True)


def same_tensors(a: Path, b: Path) -> bool:
    """Whether two safetensors files hold the same tensors, bit for bit."""
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path → SHA-256 (``"dir"`` for folders)."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def snapshot() -> Callable[[Path], dict[str, str]]:
    return tree_hashes


def squash(text: str) -> str:
    """Whitespace collapsed, so phrases match however a console wrapped them."""
    return " ".join(text.split())


@pytest.fixture(scope="session")
def flat() -> Callable[[str], str]:
    return squash
