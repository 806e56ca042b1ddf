"""The ``mlflow`` logger: MLflow metrics written while training, to a store in the run folder."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from crossdistill._util.files import write_atomic
from crossdistill.errors import require
from crossdistill.train.callbacks._base import (
    CALLBACKS,
    CheckpointedLogger,
    Trainer,
    read_json_dict,
    run_folder,
)

INSTALL = "pip install mlflow-skinny (or: pip install 'crossdistill[logging]')"
RUN_ID_FILE = "crossdistill_run.json"  # in the logger's folder: the MLflow run a resume continues
_FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"


@CALLBACKS.register("mlflow")
class MlflowLogger(CheckpointedLogger):
    """MLflow metrics and the ``train:`` settings as params, written while training.

    By default the store is a local MLflow file store in the run's ``mlflow/`` folder (read it
    with ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri runs/NAME/mlflow``, or
    ``mlflow.MlflowClient("file://...")``); ``tracking_uri`` names another (``sqlite:///...``,
    ``http://...``). Metrics are ``train/<term>`` per logged step, ``epoch/<value>``,
    ``eval/<metric>``, against the optimizer step. They reach MLflow at each checkpoint (and at
    the end), so a ``--resume``d run continues the same MLflow run (its id kept in the run
    folder) without logging any step twice.
    """

    requires = ("mlflow", INSTALL)

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "crossdistill",
        run_name: str | None = None,
        log_dir: str | None = None,
    ) -> None:
        require("mlflow", "the mlflow logger", INSTALL)  # before training, not at its start
        super().__init__()
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.log_dir = log_dir
        self.client: Any = None
        self.run_id: str | None = None

    def on_start(self, trainer: Trainer) -> None:
        from mlflow.tracking import MlflowClient  # optional package

        folder = run_folder(trainer, "mlflow_dir", self.log_dir, "mlflow")
        folder.mkdir(parents=True, exist_ok=True)
        uri = self.tracking_uri or folder.absolute().as_uri()
        saved = read_json_dict(folder / RUN_ID_FILE)
        with _file_store(uri):
            self.client = MlflowClient(tracking_uri=uri)
            if trainer.step and saved.get("tracking_uri") == uri and saved.get("run_id"):
                self.run_id = str(saved["run_id"])  # a resumed run continues its MLflow run
                self.client.update_run(self.run_id, status="RUNNING")
                return
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = (
                found.experiment_id if found else self.client.create_experiment(self.experiment)
            )
            name = self.run_name or getattr(getattr(trainer.run, "path", None), "name", None)
            self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
            self.client.log_batch(self.run_id, params=_params(trainer.spec.model_dump(mode="json")))
        write_atomic(
            folder / RUN_ID_FILE,
            json.dumps({"tracking_uri": uri, "run_id": self.run_id}),
            what="the MLflow run id",
        )

    def _send(self, values: list[tuple[str, float, int, float]]) -> None:
        from mlflow.entities import Metric  # optional package

        if self.client is None or self.run_id is None:
            return
        metrics = [Metric(name, value, int(at * 1000), step) for name, value, step, at in values]
        with _file_store(self.client.tracking_uri):
            for i in range(0, len(metrics), 1000):  # MLflow's batch limit
                self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def _end(self, failed: bool) -> None:
        if self.client is not None and self.run_id is not None:
            with _file_store(self.client.tracking_uri):
                self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
        self.run_id = None
        if failed:
            self.client = None


@contextlib.contextmanager
def _file_store(uri: str) -> Iterator[None]:
    """MLflow 3 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set: set it for
    the logger's own calls to a ``file:`` store, and put the environment back after."""
    if not uri.startswith("file:") or _FILE_STORE_ENV in os.environ:
        yield
        return
    os.environ[_FILE_STORE_ENV] = "true"
    try:
        yield
    finally:
        os.environ.pop(_FILE_STORE_ENV, None)


def _params(settings: dict[str, Any], prefix: str = "train.") -> list[Any]:
    """``train:`` settings flattened into MLflow params (``train.optimizer.lr``...)."""
    from mlflow.entities import Param  # optional package

    out: list[Any] = []
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            out += _params(value, f"{prefix}{key}.")
        else:
            out.append(Param(f"{prefix}{key}", json.dumps(value)[:6000]))
    return out
