"""Callbacks and live loggers (``train.loggers`` / ``train.callbacks``): the hooks a user callback
sees, TensorBoard, MLflow and W&B (offline) written while training and read back by their own
readers, a failing callback's error and the resume after it, and a logger whose package is
missing."""

from __future__ import annotations

import json
import struct
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from crossdistill import distill
from crossdistill.config import Recipe, TrainSpec, load_recipe
from crossdistill.errors import CallbackError, ConfigError, UnknownNameError
from crossdistill.pipeline import run_recipe
from crossdistill.report.data import load_run, write_tensorboard
from crossdistill.train.callbacks import Callback, build_callbacks, check_callbacks

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "recipes" / "digits" / "teacher.yaml"
EPOCHS = 2
LOG_EVERY = 5

# a user's callback module: records every hook it sees to a JSON-lines file, and fails on
# request (at a step, or in a hook) to show how a failure is reported and resumed
USER_MODULE = textwrap.dedent(
    """
    import json
    from crossdistill.train.callbacks import Callback

    class Recorder(Callback):
        def __init__(self, out: str, fail_at_step: int = 0) -> None:
            self.out, self.fail_at_step = out, fail_at_step

        def _note(self, hook, trainer, **what):
            with open(self.out, "a") as f:
                f.write(json.dumps({"hook": hook, "step": trainer.step, **what}) + "\\n")

        def on_start(self, trainer):
            self._note("on_start", trainer)

        def on_step(self, trainer, step, record):
            if step == self.fail_at_step:
                raise RuntimeError("the user's callback broke")
            self._note("on_step", trainer, at=step, loss=record["loss"])

        def on_epoch(self, trainer, epoch, record):
            self._note("on_epoch", trainer, epoch=epoch, train_loss=record["train_loss"])

        def on_eval(self, trainer, epoch, metrics):
            self._note("on_eval", trainer, epoch=epoch, accuracy=metrics["accuracy"])

        def on_checkpoint(self, trainer, path):
            self._note("on_checkpoint", trainer, path=str(path))

        def on_end(self, trainer, history):
            self._note("on_end", trainer, epochs=len(history.train_loss))

        def close(self, trainer):
            self._note("close", trainer)

    class Peek(Callback):
        # after epoch 1, reads TensorBoard's event files from inside the run

        def __init__(self, out: str) -> None:
            self.out = out

        def on_epoch(self, trainer, epoch, record):
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            if epoch == 1:
                acc = EventAccumulator(str(trainer.run.tensorboard_dir), {"scalars": 0})
                acc.Reload()
                steps = [e.step for e in acc.Scalars("train/loss")]
                with open(self.out, "w") as f:
                    json.dump(steps, f)
    """
)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "my_callbacks.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    yield "my_callbacks:Recorder"
    sys.modules.pop("my_callbacks", None)


def _recipe(tmp_path: Path, *overrides: str) -> Recipe:
    return load_recipe(
        TEACHER,
        overrides=[
            f"output.dir={tmp_path / 'runs'}",
            "train.progress=false",
            f"train.epochs={EPOCHS}",
            f"train.log_every={LOG_EVERY}",
            *overrides,
        ],
    )


def _records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _hooks(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scalars(folder: Path) -> Any:
    reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = reader.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def _mlflow(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's file store, to read it
    saved = json.loads((run_dir / "mlflow" / "crossdistill_run.json").read_text())
    return mlflow.MlflowClient(tracking_uri=saved["tracking_uri"]), saved["run_id"]


def _wandb_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))  # the logger must not use it
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):  # not the home folder
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the logger's default: offline


def _wandb_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file, as ``wandb_internal_pb2.Record`` protobufs.

    wandb 0.31 no longer ships a Python reader for these files (the old
    ``wandb.sdk.internal.datastore``), so this reads its framing, LevelDB's log format: a
    7-byte file header (``:W&B``, magic, version), then 32 KiB blocks of chunks, each a 7-byte
    header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes.
    """
    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, parts, pos = [], [], 7
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # a block's zero padding
            pos += left
            continue
        parts.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


def _wandb_history(path: Path) -> list[dict[str, Any]]:
    """The history rows (``_step`` and every logged value) of an offline W&B run file."""
    return [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in _wandb_records(path)
        if r.WhichOneof("record_type") == "history"
    ]


# ------------------------------------------------------------------ the callback interface


def test_a_user_callback_by_import_path_sees_every_hook_in_order(
    tmp_path: Path, user_module: str
) -> None:
    out = tmp_path / "hooks.jsonl"
    recipe = _recipe(
        tmp_path, f"train.callbacks=[{{name: '{user_module}', params: {{out: '{out}'}}}}]"
    )
    result = run_recipe(recipe)
    seen = _hooks(out)
    names = [h["hook"] for h in seen]
    # the hook sequence: start, then per epoch its steps, epoch, eval, checkpoint; end, close
    epoch_block = ["on_epoch", "on_eval", "on_checkpoint"]
    assert names[0] == "on_start" and names[-2:] == ["on_end", "close"]
    collapsed = [n for i, n in enumerate(names) if n != "on_step" or names[i - 1] != "on_step"]
    assert collapsed == ["on_start", *(["on_step", *epoch_block] * EPOCHS), "on_end", "close"]
    # the same steps and values as metrics.jsonl, which every run writes
    steps = _records(result.run_dir, "step")
    assert [h["at"] for h in seen if h["hook"] == "on_step"] == [r["step"] for r in steps]
    assert [h["loss"] for h in seen if h["hook"] == "on_step"] == [r["loss"] for r in steps]
    epochs = _records(result.run_dir, "epoch")
    assert [h["epoch"] for h in seen if h["hook"] == "on_epoch"] == [1, 2]
    assert [h["train_loss"] for h in seen if h["hook"] == "on_epoch"] == [
        r["train_loss"] for r in epochs
    ]
    evals = _records(result.run_dir, "eval")
    assert [h["accuracy"] for h in seen if h["hook"] == "on_eval"] == [r["accuracy"] for r in evals]
    checkpoints = [Path(h["path"]).name for h in seen if h["hook"] == "on_checkpoint"]
    assert checkpoints == ["epoch-0001", "epoch-0002"]
    assert seen[-1]["step"] == epochs[-1]["step"]  # close: after the last step


def test_callback_params_are_validated_and_names_checked(tmp_path: Path, user_module: str) -> None:
    bad_params = TrainSpec(callbacks=[{"name": user_module, "params": {"outt": "x"}}])
    for check in (check_callbacks, build_callbacks):
        with pytest.raises(ConfigError, match=r"train\.callbacks\[0\]\.params") as bad:
            check(bad_params)
        assert "out" in str(bad.value)  # what it accepts
    with pytest.raises(UnknownNameError, match="did you mean 'tensorboard'"):
        build_callbacks(TrainSpec(loggers=["tensorbord"]))
    with pytest.raises(ConfigError, match="is not a callback"):
        build_callbacks(TrainSpec(callbacks=[{"name": "crossdistill.config:TrainSpec"}]))


def test_distill_takes_callback_objects(tmp_path: Path) -> None:
    events: list[tuple[str, int]] = []

    class Counting(Callback):
        def on_step(self, trainer: Any, step: int, record: dict[str, Any]) -> None:
            events.append(("step", step))

        def on_epoch(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
            events.append(("epoch", epoch))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    torch.manual_seed(0)
    out = distill(
        None,
        nn.Linear(4, 2),
        data,
        losses=["ce"],
        batch_size=16,
        epochs=2,
        log_every=1,
        callbacks=[Counting()],
        progress=False,
        device="cpu",
    )
    assert len(out.history.train_loss) == 2
    epoch1 = [*(("step", s) for s in range(1, 5)), ("epoch", 1)]
    assert events == [*epoch1, *(("step", s) for s in range(5, 9)), ("epoch", 2)]


def test_a_logger_without_a_run_folder_needs_log_dir(tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(x, (x[:, 0] > 0).long())
    train = {"batch_size": 16, "epochs": 1, "progress": False, "device": "cpu"}
    with pytest.raises(CallbackError, match="callback 'tensorboard' failed in on_start") as e:
        distill(None, nn.Linear(4, 2), data, losses=["ce"], loggers=["tensorboard"], **train)
    assert "log_dir" in str(e.value)
    logs = tmp_path / "tb"
    tb = {"name": "tensorboard", "params": {"log_dir": str(logs)}}
    distill(None, nn.Linear(4, 2), data, losses=["ce"], loggers=[tb], **train)
    assert [e.step for e in _scalars(logs).Scalars("epoch/train_loss")] == [2]


# ------------------------------------------------------------------ TensorBoard


def test_tensorboard_is_written_while_training_and_read_back(
    tmp_path: Path, user_module: str
) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    peek = tmp_path / "peek.json"
    peeker = user_module.replace("Recorder", "Peek")  # called after the recipe's loggers
    recipe = _recipe(
        tmp_path,
        "train.loggers=[jsonl, tensorboard]",
        f"train.callbacks=[{{name: '{peeker}', params: {{out: '{peek}'}}}}]",
    )
    run = run_recipe(recipe).run

    steps = [r["step"] for r in _records(run.path, "step")]
    first_epoch = [r["step"] for r in _records(run.path, "step") if r["epoch"] == 0]
    assert json.loads(peek.read_text()) == first_epoch  # on disk while training
    acc = _scalars(run.tensorboard_dir)
    assert [e.step for e in acc.Scalars("train/loss")] == steps
    losses = [r["loss"] for r in _records(run.path, "step")]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(losses)
    assert {"train/lr", "train/ce", "epoch/train_loss", "eval/accuracy"} <= set(
        acc.Tags()["scalars"]
    )
    epochs = _records(run.path, "epoch")
    assert [e.step for e in acc.Scalars("epoch/train_loss")] == [r["step"] for r in epochs]
    assert len(acc.Scalars("eval/accuracy")) == EPOCHS

    # `crossdistill report` keeps these files instead of writing its own copy
    before = sorted(p.name for p in run.tensorboard_dir.iterdir())
    note = write_tensorboard(load_run(run.path))
    assert "while training" in note
    assert sorted(p.name for p in run.tensorboard_dir.iterdir()) == before


# ------------------------------------------------------------------ MLflow


def test_mlflow_metrics_are_read_back_by_mlflows_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    result = run_recipe(_recipe(tmp_path, "train.loggers=[mlflow]"))
    client, run_id = _mlflow(result.run_dir, monkeypatch)
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED" and info.info.run_name == result.run_dir.name
    assert json.loads(info.data.params["train.epochs"]) == EPOCHS
    steps = _records(result.run_dir, "step")
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], r["loss"]) for r in steps]
    evals = _records(result.run_dir, "eval")
    accuracy = client.get_metric_history(run_id, "eval/accuracy")
    assert [(m.step, m.value) for m in accuracy] == [(r["step"], r["accuracy"]) for r in evals]


# ------------------------------------------------------------------ Weights & Biases


def test_wandb_writes_offline_into_the_run_and_is_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _wandb_offline(monkeypatch, tmp_path)
    result = run_recipe(_recipe(tmp_path, "train.loggers=[wandb]", "train.epochs=1"))
    files = sorted((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1  # offline, in the run folder
    assert not (tmp_path / "wandb_dir").exists()  # not in WANDB_DIR
    rows = _wandb_history(files[0])
    steps = _records(result.run_dir, "step")
    logged = [(r["_step"], r["train/loss"], r["train/lr"]) for r in rows if "train/loss" in r]
    assert logged == [(r["step"], r["loss"], r["lr"]) for r in steps]
    evals = _records(result.run_dir, "eval")
    accuracy = [(r["_step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    assert accuracy == [(r["step"], r["accuracy"]) for r in evals]
    epochs = _records(result.run_dir, "epoch")
    train_loss = [(r["_step"], r["epoch/train_loss"]) for r in rows if "epoch/train_loss" in r]
    assert train_loss == [(r["step"], r["train_loss"]) for r in epochs]
    assert len({r["_step"] for r in rows}) == len(rows)  # one row per step
    # the W&B run: named after the run folder, the recipe as its config
    (run,) = [r.run for r in _wandb_records(files[0]) if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name) == ("crossdistill", result.run_dir.name)
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["train"]["epochs"] == 1 and config["name"] == result.run_dir.name


def test_wandb_missing_names_the_logging_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    for check in (check_callbacks, build_callbacks):
        with pytest.raises(ConfigError, match="the wandb logger needs the package 'wandb'") as e:
            check(TrainSpec(loggers=["jsonl", "wandb"]))
        assert "pip install wandb" in str(e.value) and "crossdistill[logging]" in str(e.value)


# ------------------------------------------------------------------ failures and resume


@pytest.mark.parametrize(
    ("every", "resumed_at"),
    [(None, 23), (10, 30)],  # the end of epoch 1; a mid-epoch checkpoint of epoch 2
    ids=["epoch-checkpoint", "mid-epoch-checkpoint"],
)
def test_a_failing_callback_stops_with_its_name_and_the_run_resumes_without_duplicates(
    tmp_path: Path,
    user_module: str,
    monkeypatch: pytest.MonkeyPatch,
    every: int | None,
    resumed_at: int,
) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    pytest.importorskip("mlflow")
    _wandb_offline(monkeypatch, tmp_path)
    out = tmp_path / "hooks.jsonl"
    steps_per_epoch = 23  # 1,437 training digits in batches of 64
    fail = steps_per_epoch + 2 * LOG_EVERY + 1  # a logged step of epoch 2
    loggers = "train.loggers=[tensorboard, mlflow, wandb]"
    checkpoints = f"train.checkpoint_every_steps={every or 'null'}"

    def callback(fail_at: int) -> str:
        spec = f"{{name: '{user_module}', params: {{out: '{out}', fail_at_step: {fail_at}}}}}"
        return f"train.callbacks=[{spec}]"

    with pytest.raises(CallbackError) as failed:
        run_recipe(_recipe(tmp_path, loggers, checkpoints, callback(fail)))
    message = str(failed.value)
    assert f"callback '{user_module}' failed in on_step" in message
    assert "RuntimeError: the user's callback broke" in message
    assert "epoch-0001" in message and "--resume" in message
    run_dir = tmp_path / "runs" / "digits_teacher"
    error = _records(run_dir, "error")
    assert len(error) == 1 and error[0]["step"] == fail
    # steps after the checkpoint reached the logs before the failure
    assert max(r["step"] for r in _records(run_dir, "step")) > resumed_at

    result = run_recipe(_recipe(tmp_path, loggers, checkpoints, callback(0)), resume=True)
    assert (result.run_dir / "student.safetensors").is_file()
    resumed = _records(result.run_dir, "resume")
    assert len(resumed) == 1 and resumed[0]["step"] == resumed_at

    # the step records of the finished run: the redone ones count, the abandoned do not
    final = [r for r in _records(result.run_dir, "step") if r["time"] > resumed[0]["time"]]
    first = [r for r in _records(result.run_dir, "step") if r["step"] <= resumed_at]
    expected = [r["step"] for r in first] + [r["step"] for r in final]
    acc = _scalars(result.run_dir / "tensorboard")
    tb_steps = [e.step for e in acc.Scalars("train/loss")]
    assert tb_steps == expected and len(set(tb_steps)) == len(tb_steps)
    assert [e.step for e in acc.Scalars("epoch/train_loss")] == [steps_per_epoch, 46]

    client, run_id = _mlflow(result.run_dir, monkeypatch)
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    ml_steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert ml_steps == expected
    assert [m.value for m in client.get_metric_history(run_id, "train/loss")] == pytest.approx(
        [r["loss"] for r in first] + [r["loss"] for r in final]
    )

    # W&B: a file per attempt (offline-run-<time>-<id>), one run id; nothing logged twice
    files = sorted((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and files[0].name == files[1].name  # run-<id>.wandb
    rows = [row for f in files for row in _wandb_history(f)]
    logged = [(r["_step"], r["train/loss"]) for r in rows if "train/loss" in r]
    losses = [r["loss"] for r in first] + [r["loss"] for r in final]
    assert logged == list(zip(expected, losses, strict=True))


def test_a_logger_whose_package_is_missing_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError

    def expensive(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("models were built before the recipe's loggers were checked")

    monkeypatch.setattr("crossdistill.pipeline.build_distiller", expensive)
    recipe = _recipe(tmp_path, "train.loggers=[tensorboard, mlflow]")
    with pytest.raises(ConfigError, match="the mlflow logger needs the package 'mlflow'") as e:
        run_recipe(recipe)
    assert r"train.loggers[1]" in str(e.value)
    assert "pip install mlflow-skinny" in str(e.value)
    assert "crossdistill[logging]" in str(e.value)
    assert not recipe.run_dir.exists()  # nothing written, nothing trained
