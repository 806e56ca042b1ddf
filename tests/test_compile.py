"""``train.compile``: the digits KD run compiled (``aot_eager``: no C++ compiler needed) gives
the eager run's losses and student, with clean checkpoint and student keys; runs resume across
compiled and eager; a backend that fails falls back to eager with one warning (or stops, when
strict); a setting that is neither true, false nor a mapping is a clear config error."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo
from safetensors.torch import load_file
from torch import nn

from crossdistill.config import CompileSpec, Recipe, load_recipe
from crossdistill.errors import ConfigError, ShapeError
from crossdistill.pipeline import run_recipe
from crossdistill.train.checkpoint import list_checkpoints
from crossdistill.train.compile import CompiledStep, CompileFallbackWarning

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "recipes" / "digits"
AOT_EAGER = "{backend: aot_eager}"

# Test backends, registered once per process (torch refuses a name twice): one that counts the
# graphs it compiles and hands them to aot_eager, one that fails in the forward (as inductor
# does without a C++ compiler), one that fails only when the backward is compiled (lazily).
GRAPHS: list[Any] = []


def _counting(gm: torch.fx.GraphModule, inputs: list[Any]) -> Callable[..., Any]:
    GRAPHS.append(gm)
    return torch._dynamo.lookup_backend("aot_eager")(gm, inputs)


def _broken(gm: torch.fx.GraphModule, inputs: list[Any]) -> Callable[..., Any]:
    raise RuntimeError("no C++ compiler here (test backend)")


def _broken_backward() -> Callable[..., Any]:
    from torch._dynamo.backends.common import aot_autograd

    def forward(gm: torch.fx.GraphModule, inputs: list[Any]) -> Callable[..., Any]:
        return gm.forward

    def backward(gm: torch.fx.GraphModule, inputs: list[Any]) -> Callable[..., Any]:
        raise RuntimeError("cannot lower the backward (test backend)")

    return aot_autograd(fw_compiler=forward, bw_compiler=backward)


for _name, _fn in (
    ("cd_test_counting", _counting),
    ("cd_test_broken", _broken),
    ("cd_test_broken_backward", _broken_backward()),
):
    if _name not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(_fn, name=_name)


def _maker(out: Path, teacher_weights: Path) -> Callable[..., Recipe]:
    """Digits KD for 2 epochs on 200 examples (a last batch of 8: a second input shape)."""

    def recipe(name: str, compile_: str = "false", *overrides: str) -> Recipe:
        return load_recipe(
            DIGITS / "kd.yaml",
            overrides=[
                f"name={name}",
                f"output.dir={out}",
                f"teacher.weights={teacher_weights}",
                "train.progress=false",
                "train.device=cpu",
                "train.epochs=2",
                "data.limit_train=200",
                "data.limit_eval=128",
                f"train.compile={compile_}",
                *overrides,
            ],
        )

    return recipe


@pytest.fixture
def make(tmp_path: Path, teacher_weights: Path) -> Callable[..., Recipe]:
    return _maker(tmp_path / "runs", teacher_weights)


@pytest.fixture(scope="module")
def eager(tmp_path_factory: pytest.TempPathFactory, digits_teacher_run: Path) -> Any:
    """The eager run every compiled run is compared with (read-only)."""
    out = tmp_path_factory.mktemp("eager")
    return run_recipe(_maker(out, digits_teacher_run / "student.safetensors")("eager"))


def _compile_records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "compile"]


def _student(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "student.safetensors"))


def _trainable(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(list_checkpoints(run / "checkpoints")[-1] / "trainable.safetensors"))


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= tol, f"max |difference| {worst:.3g} > {tol}"


# ----------------------------------------------------------------------------- the setting


def test_compile_setting_forms(make: Callable[..., Recipe]) -> None:
    assert make("a").train.compile_spec is None
    assert make("a", "true").train.compile_spec == CompileSpec()
    spec = make("a", "{backend: aot_eager, dynamic: false, strict: true}").train.compile_spec
    assert spec == CompileSpec(backend="aot_eager", dynamic=False, strict=True)
    assert spec.no_fallback
    assert CompileSpec(fullgraph=True).no_fallback and not CompileSpec().no_fallback
    # a run resumes compiled or eager: compile is not part of the recipe's fingerprint
    assert make("a").fingerprint() == make("a", AOT_EAGER).fingerprint()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("3", "train.compile is true, false or a mapping"),
        ("inductor", "train.compile is true, false or a mapping"),
        ("{backend: aot_eager, mode: max-autotune}", "is an inductor setting"),
        ("{backend: inductor, fullgrap: true}", "did you mean fullgraph"),
    ],
)
def test_bad_compile_setting_is_a_config_error(
    make: Callable[..., Recipe], value: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=r"train\.compile") as info:
        make("a", value)
    assert says in str(info.value)


def test_unknown_backend_is_refused_before_training(make: Callable[..., Recipe]) -> None:
    recipe = make("a", "{backend: indcutor}")
    with pytest.raises(ConfigError, match="'indcutor' is not a TorchDynamo backend") as info:
        run_recipe(recipe)
    assert "aot_eager" in str(info.value) and "inductor" in str(info.value)
    assert not (recipe.run_dir / "student.safetensors").exists()


# ----------------------------------------------------------------------------- compiled runs


def test_compiled_run_equals_eager_with_clean_keys(make: Callable[..., Recipe], eager: Any) -> None:
    GRAPHS.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        compiled = run_recipe(make("compiled", "{backend: cd_test_counting}"))
    assert GRAPHS, "the training step never went through the compiler"
    assert compiled.history.train_loss == pytest.approx(eager.history.train_loss, rel=1e-5)
    assert compiled.metrics["accuracy"] == pytest.approx(eager.metrics["accuracy"], abs=1e-6)
    assert eager.run_dir is not None and compiled.run_dir is not None
    for read in (_student, _trainable):
        a, b = read(eager.run_dir), read(compiled.run_dir)
        assert not [k for k in b if "_orig_mod" in k]
        _assert_close(a, b, 1e-5)  # same keys, same values up to float rounding


@pytest.mark.parametrize(("first", "then"), [("false", AOT_EAGER), (AOT_EAGER, "false")])
def test_resume_across_compiled_and_eager(
    make: Callable[..., Recipe], eager: Any, first: str, then: str
) -> None:
    recipe = make("part", first)
    run_recipe(recipe)
    shutil.rmtree(recipe.run_dir / "checkpoints" / "epoch-0002")  # as if stopped after epoch 1
    (recipe.run_dir / "student.safetensors").unlink()
    resumed = run_recipe(make("part", then), resume=True)
    assert len(resumed.history.train_loss) == 1  # only epoch 2 ran again
    _assert_close(_student(eager.run_dir), _student(recipe.run_dir), 1e-5)


@pytest.mark.parametrize("backend", ["cd_test_broken", "cd_test_broken_backward"])
def test_compile_failure_falls_back_with_one_warning(
    make: Callable[..., Recipe], eager: Any, backend: str
) -> None:
    with pytest.warns(CompileFallbackWarning) as caught:
        fallback = run_recipe(make("fallback", f"{{backend: {backend}}}"))
    warned = [w for w in caught if issubclass(w.category, CompileFallbackWarning)]
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "(test backend)" in message and "--set train.compile=false" in message
    assert backend in message
    [start, fell] = _compile_records(fallback.run_dir)
    assert start["compiled"] and "fallback" not in start
    assert not fell["compiled"] and "(test backend)" in fell["fallback"] and fell["step"] == 1
    # the failing step was redone eagerly from the same random state: the eager run, exactly
    assert eager.run_dir is not None and fallback.run_dir is not None
    assert fallback.history.train_loss == eager.history.train_loss
    _assert_close(_student(eager.run_dir), _student(fallback.run_dir), 0.0)


@pytest.mark.parametrize("setting", ["strict: true", "fullgraph: true"])
def test_strict_compile_failure_stops_the_run(make: Callable[..., Recipe], setting: str) -> None:
    recipe = make("strict", f"{{backend: cd_test_broken, {setting}}}")
    with pytest.raises(ConfigError, match="could not compile the training step") as info:
        run_recipe(recipe)
    text = str(info.value)
    assert "cd_test_broken" in text and setting in text and "(test backend)" in text
    assert "train.compile=false" in text
    assert not (recipe.run_dir / "student.safetensors").exists()


# ----------------------------------------------------------------------------- CompiledStep


def test_an_error_of_the_step_itself_is_raised_as_it_is() -> None:
    """When the eager redo fails as well, its error is the real one: no fallback warning."""
    step = CompiledStep(nn.Linear(2, 2), CompileSpec(backend="aot_eager"))

    def fails() -> None:
        raise ValueError("bad input")

    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        with pytest.raises(ValueError, match="bad input"):
            step.run(fails, fails)
        # crossdistill's own errors are not retried at all
        step = CompiledStep(nn.Linear(2, 2), CompileSpec(backend="aot_eager"))
        with pytest.raises(ShapeError, match="wrong shape"):
            step.run(lambda: (_ for _ in ()).throw(ShapeError("wrong shape")), _unreachable)
        assert step.active


def _unreachable() -> None:
    raise AssertionError("the eager step ran")


def test_no_dynamo_here_is_found_at_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where TorchDynamo cannot run at all (a Python torch does not support yet), nothing is
    compiled: one warning at setup (a ConfigError when strict), and steps run eagerly."""
    import crossdistill.train.compile as compile_module

    monkeypatch.setattr(compile_module, "dynamo_problem", lambda: "Python 3.99 not supported")
    model = nn.Linear(2, 2)
    with pytest.warns(CompileFallbackWarning, match="Python 3.99 not supported"):
        step = CompiledStep(model, CompileSpec(backend="aot_eager"))
    assert not step.active and model._compiled_call_impl is None
    assert step.run(_unreachable, lambda: "eager") == "eager"
    with pytest.raises(ConfigError, match=r"Python 3\.99 not supported.*strict: true"):
        CompiledStep(model, CompileSpec(backend="aot_eager", strict=True))


def test_compiled_module_keeps_its_parameter_names() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    names = list(model.state_dict())
    step = CompiledStep(model, CompileSpec(backend="aot_eager"))
    x = torch.randn(5, 3)
    expected = nn.Sequential(*model).forward(x)
    out = step.run(lambda: model(x), _unreachable)
    assert step.active and list(model.state_dict()) == names
    torch.testing.assert_close(out, expected)


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_inductor_on_cpu_matches_eager(make: Callable[..., Recipe], eager: Any) -> None:
    """The default backend (needs a C++ compiler: where there is none, the fallback tests
    above cover what happens)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        compiled = run_recipe(make("inductor", "true"))
    assert compiled.history.train_loss == pytest.approx(eager.history.train_loss, rel=1e-4)
    assert eager.run_dir is not None and compiled.run_dir is not None
    _assert_close(_student(eager.run_dir), _student(compiled.run_dir), 1e-4)


@pytest.mark.slow
def test_ddp_compiled_equals_one_eager_process(tmp_path: Path, teacher_weights: Path) -> None:
    """Under torchrun the Distiller is compiled, then wrapped in DDP: two compiled processes
    give the student one eager process gives (test_distributed's setup)."""
    from test_distributed import assert_close, crossdistill, recipe_file, student

    one = recipe_file(tmp_path, teacher_weights, "one")
    two = recipe_file(
        tmp_path, teacher_weights, "two", **{"train.compile": {"backend": "aot_eager"}}
    )
    crossdistill("run", str(one), cwd=tmp_path)
    crossdistill("run", str(two), "--nproc", "2", cwd=tmp_path)
    # compiled on both ranks, and no fallback to eager (rank 0's log)
    assert [
        (r["compiled"], "fallback" in r) for r in _compile_records(tmp_path / "runs" / "two")
    ] == [(True, False)]
    assert_close(student(tmp_path / "runs" / "one"), student(tmp_path / "runs" / "two"), 1e-5)
