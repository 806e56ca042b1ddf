"""Bad inputs through the real command line: each is one clear message, exit code 2, no traceback,
and nothing that existed before is touched.

Every case gets its own workspace holding a pre-existing run (``runs/previous``); its files are
hashed before and after the command. Errors that can be found before training must not leave a
new run directory behind. The commands of all selected cases run concurrently (a few at a time)
in one module fixture, each in a process forked from a server that has imported torch once
(conftest's ``forked_cli``); the tests then only check outcomes. A few cases also run as fresh
``python -m crossdistill`` processes, which must give the same outcome.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import subprocess
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file

from conftest import ForkedCli, run_cli, squash, tree_hashes
from crossdistill.config import dump_recipe, load_recipe
from crossdistill.errors import CheckpointError
from crossdistill.export import export_run
from crossdistill.models.zoo.cnn import SmallCNN
from crossdistill.pipeline import cache_recipe, run_recipe
from crossdistill.runs import Run
from crossdistill.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

DIGITS = Path(__file__).resolve().parent.parent / "recipes" / "digits"

# ------------------------------------------------------------------------------- workspaces


def set_path(raw: Any, dotted: str, value: Any) -> None:
    """``raw["a"][1]["c"] = value`` for ``"a.1.c"``, creating missing mappings."""
    *head, last = dotted.split(".")
    for part in head:
        raw = raw[int(part)] if isinstance(raw, list) else raw.setdefault(part, {})
    raw[int(last) if isinstance(raw, list) else last] = value


@dataclass
class Workspace:
    """A case's folder: ``runs/`` (the recipes' output.dir) with a finished ``previous`` run."""

    root: Path
    teacher_weights: Path
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def recipe(
        self,
        source: str = "teacher.yaml",
        changes: Mapping[str, Any] | None = None,
        name: str = "recipe.yaml",
    ) -> Path:
        """A copy of a digits recipe writing into ``runs/``, with dotted-path ``changes``."""
        raw = yaml.safe_load((DIGITS / source).read_text())
        set_path(raw, "output.dir", str(self.runs))
        set_path(raw, "train.progress", False)
        set_path(raw, "train.device", "cpu")
        if "teacher" in raw:
            set_path(raw, "teacher.weights", str(self.teacher_weights))
        for key, value in (changes or {}).items():
            set_path(raw, key, value)
        path = self.root / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path


Setup = Callable[[Workspace], list[str]]  # prepares a workspace, returns the CLI arguments


def _run(
    changes: Mapping[str, Any] | None = None, source: str = "teacher.yaml", *extra: str
) -> Setup:
    """``run <a copy of source with changes> EXTRA...``."""
    return lambda ws: ["run", str(ws.recipe(source, changes)), *extra]


def _run_text(text: str) -> Setup:
    """``run`` on a recipe file holding ``text``."""

    def setup(ws: Workspace) -> list[str]:
        path = ws.root / "bad.yaml"
        path.write_text(text)
        return ["run", str(path)]

    return setup


def _pickle_weights(ws: Workspace) -> list[str]:
    """The KD recipe with teacher weights that are a pickle under a ``.safetensors`` name."""
    path = ws.root / "teacher.safetensors"
    torch.save(SmallCNN(width=16).state_dict(), path)
    return _run({"teacher.weights": str(path)}, "kd.yaml")(ws)


def _corrupt_run(ws: Workspace) -> list[str]:
    """``--resume`` of a run (made in-process) whose last checkpoint has one byte flipped."""
    path = ws.recipe(changes={"name": "broken", "train.epochs": 2})
    run_recipe(load_recipe(path))
    target = ws.runs / "broken" / "checkpoints" / "epoch-0002" / "trainable.safetensors"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    ws.notes["corrupted"] = target
    return ["run", str(path), "--resume"]


STORE = {"path": "runs/store", "shard_size": 64}


def _stored(damage: Callable[[Path], None], changes: Mapping[str, Any] | None = None) -> Setup:
    """``run`` of the KD recipe (with ``changes``) after its store, written in-process
    (under ``runs/``: it must stay untouched), was damaged by ``damage(store)``."""

    def setup(ws: Workspace) -> list[str]:
        base = {"store": {**STORE, "path": str(ws.runs / "store")}, "data.limit_train": 200}
        cache_recipe(load_recipe(ws.recipe("kd.yaml", base, name="cached.yaml")), progress=False)
        damage(ws.runs / "store")
        return ["run", str(ws.recipe("kd.yaml", {**base, **(changes or {})}))]

    return setup


def _flip_byte(store: Path) -> None:
    shard = store / "shards" / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x10
    shard.write_bytes(bytes(data))


def _truncate(store: Path) -> None:
    shard = store / "shards" / "shard-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])


def _cache_other_teacher(ws: Workspace) -> list[str]:
    """``cache`` of the KD recipe whose store path (under ``runs/``: it must stay untouched)
    holds a finished store written in-process for a teacher with other weights."""
    base = {"store": {**STORE, "path": str(ws.runs / "store")}, "data.limit_train": 200}
    other = ws.root / "other_teacher.safetensors"
    torch.manual_seed(1)
    save_file(SmallCNN(width=16).state_dict(), str(other))
    recipe = ws.recipe("kd.yaml", {**base, "teacher.weights": str(other)}, name="other.yaml")
    cache_recipe(load_recipe(recipe), progress=False)
    return ["cache", str(ws.recipe("kd.yaml", base))]


FACTORIES = '''"""A user's model factories (the workspace is the working directory of
``python -m crossdistill``, so it imports them)."""


def not_a_module(**params):
    return {"params": params}


def broken(**params):
    raise RuntimeError("the factory failed on purpose")


def no_examples(split):
    """The digits source with every example left out."""
    from crossdistill.data import load_source

    data = load_source("digits", split)
    return type(data)(data.inputs[:0], data.targets[:0], data.class_names, f"none/{split}")
'''


def _factory(ref: str, params: Mapping[str, Any] | None = None) -> Setup:
    """``run`` with ``student.model: ref``, after writing ``tiny_models.py`` (FACTORIES) and
    ``syntax_error.py`` (not valid Python) into the workspace."""

    def setup(ws: Workspace) -> list[str]:
        (ws.root / "tiny_models.py").write_text(FACTORIES)
        (ws.root / "syntax_error.py").write_text("def build(:\n")
        return _run({"student.model": ref, "student.params": dict(params or {})})(ws)

    return setup


def _no_examples(ws: Workspace) -> list[str]:
    """``run`` with ``data.source: tiny_models:no_examples`` (a source of 0 examples)."""
    (ws.root / "tiny_models.py").write_text(FACTORIES)
    return _run({"data.source": "tiny_models:no_examples"})(ws)


class _Payload:
    """Unpickling this creates ``marker``: the proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _pickle_checkpoint(directory: Path, marker: Path, rehash: bool) -> Path:
    """Replace ``directory``'s ``trainable.safetensors`` by a pickle (``torch.save`` of a state
    dict carrying a payload that creates ``marker``); ``rehash``: update ``state.json``'s
    SHA-256 to match, as an attacker who rewrites the whole checkpoint would."""
    target = directory / "trainable.safetensors"
    torch.save({**SmallCNN(width=16).state_dict(), "payload": _Payload(marker)}, target)
    if rehash:
        state = json.loads((directory / "state.json").read_text())
        state["sha256"]["trainable.safetensors"] = hashlib.sha256(target.read_bytes()).hexdigest()
        (directory / "state.json").write_text(json.dumps(state))
    return target


def _resumed(
    damage: Callable[[Workspace, Path], None], changes: Mapping[str, Any] | None = None
) -> Setup:
    """``run --resume`` (with ``changes``) of ``runs/resumed``, a copy of the finished teacher run
    (with the config.yaml this workspace's recipe writes) whose newest checkpoint was damaged by
    ``damage(ws, checkpoint)``."""

    def setup(ws: Workspace) -> list[str]:
        run = ws.runs / "resumed"
        shutil.copytree(ws.runs / "previous", run)
        original = ws.recipe(changes={"name": "resumed"}, name="original.yaml")
        dump_recipe(load_recipe(original), run / "config.yaml")
        damage(ws, list_checkpoints(Run(run).checkpoints)[-1])
        recipe = ws.recipe(changes={"name": "resumed", **(changes or {})})
        return ["run", str(recipe), "--resume"]

    return setup


def _pickled(ws: Workspace, checkpoint: Path) -> None:
    # The marker is under runs/: were the pickle ever loaded, a new file would appear there.
    ws.notes["pickled"] = _pickle_checkpoint(checkpoint, ws.runs / "PWNED", rehash=True)


def _unfinished(ws: Workspace) -> list[str]:
    """``export`` of a copy of the teacher run without its student (it never finished)."""
    run = ws.runs / "unfinished"
    shutil.copytree(ws.runs / "previous", run)
    (run / "student.json").unlink()
    (run / "student.safetensors").unlink()
    return ["export", str(run.relative_to(ws.root))]


def _latin1_corpus(ws: Workspace) -> list[str]:
    """``tokenizer`` on a corpus whose second line is Latin-1 ("café" with a bare 0xE9)."""
    (ws.root / "corpus.txt").write_bytes(b"a good sentence\nthe caf\xe9 is open\n")
    return ["tokenizer", "text_file", "--param", "path=corpus.txt", "--out", "tok.json"]


def _not_a_run(ws: Workspace) -> list[str]:
    (ws.runs / "notes").mkdir()
    (ws.runs / "notes" / "todo.txt").write_text("not a run\n")
    return ["report", "runs/notes"]


# Trust: a run or export folder is data. The payloads would create PWNED in the workspace,
# which every case checks is absent.


def _payload(ws: Workspace) -> dict[str, Any]:
    return {"model": "os:system", "params": {"command": f"touch {ws.root / 'PWNED'}"}}


def _edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _student_json(edit: Callable[[dict[str, Any], Workspace], Any], *command: str) -> Setup:
    """``COMMAND runs/shared ...`` on a copy of the finished run whose student.json was
    rewritten by ``edit(meta, ws)`` (its checksum kept unless ``edit`` changes it)."""

    def setup(ws: Workspace) -> list[str]:
        run = ws.runs / "shared"
        shutil.copytree(ws.runs / "previous", run)
        _edit_json(run / "student.json", lambda meta: edit(meta, ws))
        return [command[0], "runs/shared", *command[1:]]

    return setup


def _config_teacher_runs_code(ws: Workspace) -> list[str]:
    """``eval`` of a copy of the finished run whose config.yaml names a teacher by import path
    (eval builds the teacher for its agreement metrics)."""
    run = ws.runs / "shared"
    shutil.copytree(ws.runs / "previous", run)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["teacher"] = _payload(ws)
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return ["eval", "runs/shared"]


def _model_json(edit: Callable[[dict[str, Any], Workspace], Any]) -> Setup:
    """``bench`` of a safetensors export of the finished run whose model.json was rewritten."""

    def setup(ws: Workspace) -> list[str]:
        folder = export_run(ws.runs / "previous", "safetensors", out=ws.root / "export",
                            parity_examples=8)  # fmt: skip
        _edit_json(folder / "model.json", lambda meta: edit(meta, ws))
        return ["bench", str(folder.relative_to(ws.root)), "--repeats", "1", "--batches", "1"]

    return setup


def _foreign_shard(ws: Workspace) -> list[str]:
    """``run`` of the KD recipe from its store, one of whose shards (with its record) was
    copied from a store of a teacher with other weights."""
    base = {"store": {**STORE, "path": str(ws.runs / "store")}, "data.limit_train": 200}
    cache_recipe(load_recipe(ws.recipe("kd.yaml", base, name="cached.yaml")), progress=False)
    other = ws.root / "other_teacher.safetensors"
    torch.manual_seed(1)
    save_file(SmallCNN(width=16).state_dict(), str(other))
    elsewhere = {**base, "store": {**STORE, "path": str(ws.root / "other")},
                 "teacher.weights": str(other)}  # fmt: skip
    cache_recipe(load_recipe(ws.recipe("kd.yaml", elsewhere, name="other.yaml")), progress=False)
    for suffix in (".safetensors", ".json"):
        name = f"shard-00001{suffix}"
        shutil.copy(ws.root / "other" / "shards" / name, ws.runs / "store" / "shards" / name)
    return ["run", str(ws.recipe("kd.yaml", base))]


def _name_dotdot(*extra: str) -> Setup:
    """``run --name .. EXTRA`` with output.dir ``runs/out``: ``..`` is ``runs/``, which holds
    the finished run and a user's own ``eval.json``."""

    def setup(ws: Workspace) -> list[str]:
        (ws.runs / "eval.json").write_text('{"the user\'s": "own file"}\n')
        changes = {"output.dir": str(ws.runs / "out")}
        return _run(changes, "teacher.yaml", "--name", "..", *extra)(ws)

    return setup


def _teacher_weights(change: Callable[[dict[str, torch.Tensor]], None]) -> Setup:
    """``run`` of the KD recipe whose teacher weights were changed by ``change(state)``."""

    def setup(ws: Workspace) -> list[str]:
        state = SmallCNN(width=16).state_dict()
        change(state)
        path = ws.root / "teacher.safetensors"
        save_file(state, str(path))
        return _run({"teacher.weights": str(path)}, "kd.yaml")(ws)

    return setup


def _to_int8(state: dict[str, torch.Tensor]) -> None:
    for key in state:
        if state[key].is_floating_point():
            state[key] = state[key].mul(100).to(torch.int8)


def _nan_in_first(state: dict[str, torch.Tensor]) -> None:
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first][...] = float("nan")


def _huge_idx(ws: Workspace) -> list[str]:
    """Fashion-MNIST files whose image header claims 2**32 - 1 images of 2**32 - 1 rows."""
    root = ws.root / "fashion"
    root.mkdir()
    header = bytes([0, 0, 0x08, 3]) + (2**32 - 1).to_bytes(4, "big") * 2 + (28).to_bytes(4, "big")
    for prefix in ("train", "t10k"):
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + b"abc"))
        labels = bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, "big") + bytes(3)
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return _run({"data.source": "fashion_mnist", "data.params": {"root": str(root)}})(ws)


@dataclass(frozen=True)
class Case:
    setup: Setup
    phrases: tuple[str, ...]  # each must appear in stderr (whitespace collapsed)
    before_training: bool = True  # detectable before training: no new run directory


# fmt: off
CASES: dict[str, Case] = {
    "misspelt-loss": Case(
        _run({"losses.1.name": "kdd"}, "kd.yaml"),
        ("unknown loss 'kdd'", "did you mean 'kd'")),
    "misspelt-model": Case(
        _run({"student.model": "cnnn"}),
        ("unknown model 'cnnn'", "did you mean 'cnn'")),
    "yaml-type-error": Case(
        _run({"train.epochs": "ten"}),
        ("train.epochs:", "valid integer", "'ten'")),
    "unknown-key": Case(
        _run({"train.epochz": 3}),
        ("train.epochz: unknown key", "did you mean epochs")),
    "malformed-yaml": Case(
        _run_text("name: digits\nlosses: [ce\n"),
        ("bad.yaml is not valid YAML",)),
    "missing-recipe": Case(
        lambda ws: ["run", str(ws.root / "nope.yaml")],
        ("nope.yaml' does not exist",)),
    "tap-path": Case(
        _run({"student.taps": [{"name": "mid", "path": "blok2"}]}),
        ("no module at path 'blok2'", "did you mean 'block2'")),
    "loss-needs-teacher": Case(
        _run({"losses": [{"name": "ce"}, {"name": "kd"}]}),
        ("losses ['kd'] read the teacher, but no teacher is configured",)),
    "teacher-outputs": Case(
        _run({"teacher.outputs": ["embedding"]}, "kd.yaml"),
        ("loss 'kd' needs 'logits' from the teacher", "['embedding']")),
    "missing-data": Case(
        _run({"data.source": "fashion_mnist", "data.params": {"root": "/nonexistent"}}),
        ("IDX file not found", "/nonexistent")),
    "missing-teacher-weights": Case(
        lambda ws: _run({"teacher.weights": str(ws.root / "none.safetensors")}, "kd.yaml")(ws),
        ("teacher.weights:", "none.safetensors' does not exist")),
    "wrong-architecture": Case(
        _run({"teacher.params.width": 8}, "kd.yaml"),
        ("do not fit SmallCNN", "shape mismatch")),
    "pickle-weights": Case(
        _pickle_weights,
        ("is not a readable safetensors file", "only from .safetensors")),
    "run-dir-exists": Case(
        _run({"name": "previous"}),
        ("already exists", "--resume")),
    "nproc-batch-split": Case(
        _run(None, "teacher.yaml", "--nproc", "3"),
        ("data.batch_size 64 does not split evenly over 3 processes",)),
    "bad-set": Case(
        _run(None, "teacher.yaml", "--set", "train.epochs"),
        ("'train.epochs' is not KEY=VALUE",)),
    "eval-not-a-run": Case(
        lambda ws: ["eval", str(ws.runs)],
        ("is not a run directory",)),
    # Cross-architecture features: shapes, ranks and attention, all found on the preflight batch.
    "no-adapter-bridges": Case(
        _run({"student.taps": [{"name": "vec", "path": "pool"}],
              "teacher.taps": [{"name": "map", "path": "block3"}],
              "losses.1": {"name": "fitnet", "adapter": "auto",
                           "params": {"student": "features/vec", "teacher": "features/map"}}},
             "kd.yaml"),
        ("no adapter maps a student vector (16,) to a teacher map (64, 2, 2)",
         "'features/vec' (the output of module 'pool')",
         "'features/map' (the output of module 'block3')")),
    "feature-shapes-differ": Case(
        _run({"student.taps": [{"name": "map", "path": "block3"}],
              "teacher.taps": [{"name": "map", "path": "block3"}],
              "losses.1": {"name": "fitnet",
                           "params": {"student": "features/map", "teacher": "features/map"}}},
             "kd.yaml"),
        ("shapes differ", "student 'features/map' (2, 16, 2, 2)",
         "teacher 'features/map' (2, 64, 2, 2)", "adapter: auto")),
    "loss-wrong-rank": Case(
        _run({"losses.1": {"name": "attention_kl",
                           "params": {"student": "logits", "teacher": "logits"}}}, "kd.yaml"),
        ("attention_kl", "'logits' (2, 10)")),
    "adapter-unknown": Case(
        _run({"student.taps": [{"name": "map", "path": "block3"}],
              "teacher.taps": [{"name": "map", "path": "block3"}],
              "losses.1": {"name": "fitnet", "adapter": "conv11",
                           "params": {"student": "features/map", "teacher": "features/map"}}},
             "kd.yaml"),
        ("unknown adapter 'conv11'", "did you mean 'conv1x1'")),
    "attention-from-a-map": Case(
        _run({"student.taps": [{"name": "a", "path": "block3", "kind": "attention"}],
              "teacher.taps": [{"name": "a", "path": "block3", "kind": "attention"}],
              "losses.1": {"name": "attention_kl",
                           "params": {"student": "attention/a", "teacher": "attention/a"}}},
             "kd.yaml"),
        ("attention_kl",)),
    # Knowledge stores: written for another recipe, damaged, unfinished, or impossible.
    "store-missing": Case(
        _run({"store": STORE}, "kd.yaml"),
        ("there is no knowledge store at runs/store", "crossdistill cache RECIPE")),
    "store-other-preprocessing": Case(
        _stored(lambda s: None, {"teacher.pipeline": [{"name": "normalize", "params": {
                                                        "mean": [0.5], "std": [0.5]}}]}),
        ("was written for another recipe", "teacher model, outputs, taps or input pipeline")),
    "store-other-data": Case(
        _stored(lambda s: None, {"data.limit_train": 100}),
        ("was written for another recipe", "training data")),
    "store-corrupt-shard": Case(
        _stored(_flip_byte), ("shard-00000.safetensors is corrupted", "crossdistill cache")),
    "store-truncated-shard": Case(
        _stored(_truncate), ("shard-00003.safetensors is truncated or altered",)),
    "store-bad-manifest": Case(
        _stored(lambda s: (s / "manifest.json").write_text('{"shards": [')),
        ("manifest.json cannot be read",)),
    "store-incomplete": Case(
        _stored(lambda s: (s / "manifest.json").unlink()),
        ("is incomplete (4 of 4 shards written)", "continues where it stopped")),
    "cache-without-slots": Case(
        lambda ws: ["cache", str(ws.recipe("kd.yaml", {
            "store": STORE, "data.augment": {"name": "crop_flip"}}))],
        ("augmented afresh every epoch", "augment_slots")),
    "cache-without-store": Case(
        lambda ws: ["cache", str(ws.recipe("kd.yaml"))],
        ("the recipe has no `store:` section",)),
    # Found during training: a run directory is expected, with its last good checkpoint.
    "non-finite": Case(  # the learning rate jumps by 1e30 at the start of epoch 2
        _run({"name": "diverges",
              "train.schedule": {"name": "step", "milestones": [1], "gamma": 1.0e30}}),
        ("became NaN/Inf at epoch 2", "epoch-0001"), before_training=False),
    "non-finite-first-epoch": Case(
        _run({"name": "diverges", "train.optimizer.lr": 1.0e30}),
        ("became NaN/Inf at epoch 1", "none yet"), before_training=False),
    "corrupt-checkpoint": Case(
        _corrupt_run,
        ("checkpoint file", "trainable.safetensors", "is missing or corrupted"),
        before_training=False),
    # Config values that do not validate, or overrides that name no such place.
    "batch-size-zero": Case(
        _run({"data.batch_size": 0}),
        ("data.batch_size: Input should be greater than 0", "(got 0)")),
    "unknown-optimizer": Case(
        _run({"train.optimizer.name": "adam"}),
        ("train.optimizer.name: Input should be 'sgd' or 'adamw'", "(got 'adam')")),
    "topk-without-k": Case(
        _run({"store": {"path": "runs/store", "keys": {"logits": {"format": "topk"}}}}, "kd.yaml"),
        ("store.keys.logits:", "format: topk needs `k:`")),
    "set-index-out-of-range": Case(
        _run(None, "teacher.yaml", "--set", "losses.9.weight=1"),
        ("override path 'losses.9'", "'9' is not an index below 1")),
    "teacher-model-and-members": Case(
        _run({"teacher.members": [{"model": "cnn", "params": {"width": 16}}]}, "kd.yaml"),
        ("teacher: Value error", "`model:` (one teacher)", "`members:`")),
    # Data: splits, sizes and augmentations that do not exist.
    "unknown-split": Case(
        _run({"data.train_split": "validation"}),
        ("data source 'digits' has no split 'validation'", "valid splits: train, test")),
    "limit-train-zero": Case(
        _run({"data.limit_train": 0}),
        ("data.limit_train: Input should be greater than 0",)),
    "augment-bad-param": Case(
        _run({"data.augment": {"name": "crop_flip", "params": {"padding": -1}}}),
        ("crop_flip: padding must be a non-negative integer, got -1",)),
    "augment-unknown": Case(
        _run({"data.augment": {"name": "crop_flipp"}}),
        ("unknown augmentation 'crop_flipp'", "did you mean 'crop_flip'")),
    # Models given as module:Callable, or built with params they do not take.
    "model-module-missing": Case(
        _factory("no_such_module:build"),
        ("cannot import module 'no_such_module'", "PYTHONPATH")),
    "model-attribute-missing": Case(
        _factory("tiny_models:nothing_here"),
        ("'tiny_models' has no attribute 'nothing_here'",)),
    "model-not-a-module": Case(
        _factory("tiny_models:not_a_module"),
        ("model 'tiny_models:not_a_module' returned a dict, not a torch Module",)),
    "model-unknown-param": Case(
        _run({"student.params.depthh": 3}),
        ("bad parameters for model 'cnn'", "student.params.depthh: unknown key",
         "accepts: in_channels, num_classes, width")),
    "model-factory-raises": Case(
        _factory("tiny_models:broken"),
        ("cannot build model 'tiny_models:broken'", "RuntimeError: the factory failed on purpose")),
    "model-module-syntax-error": Case(
        _factory("syntax_error:build"),
        ("cannot import module 'syntax_error'", "SyntaxError: invalid syntax",
         "python -c 'import syntax_error'")),
    "model-negative-width": Case(
        _run({"student.params.width": -1}),
        ("cannot build model 'cnn'", "negative dimension -1")),
    "fewer-classes-than-data": Case(
        _run({"student.params.num_classes": 5}),
        ("loss 'ce' reads hard labels of the data's 10 classes against the student's "
         "'logits', which has 5", "student.params.num_classes: 10")),
    # Checkpoints on --resume: a pickle, unreadable state, another recipe.
    "resume-pickled-checkpoint": Case(  # state.json rehashed: the safetensors reader refuses it
        _resumed(_pickled),
        ("epoch-0003/trainable.safetensors is not a safetensors file", "never unpickled")),
    "resume-state-not-json": Case(
        _resumed(lambda ws, c: (c / "state.json").write_text('{"epoch": 3,')),
        ("epoch-0003/state.json is not valid JSON", "delete")),
    "resume-other-recipe": Case(
        _resumed(lambda ws, c: None, {"train.optimizer.lr": 0.05}),
        ("was started by a different recipe", "fingerprint")),
    # Other commands on paths that are not what they expect.
    "export-unfinished-run": Case(
        _unfinished,
        ("has no student.safetensors / student.json", "the run has not finished", "--resume")),
    "report-not-a-run": Case(
        _not_a_run,
        ("runs/notes is not a run directory (no config.yaml)",)),
    "bench-missing-path": Case(
        lambda ws: ["bench", "runs/nope"],
        ("runs/nope is neither a run directory (config.yaml) nor an export folder",)),
    "cache-other-teacher": Case(
        _cache_other_teacher,
        ("was written for another recipe", "its teacher weights differ")),
    # Text: a corpus that is not UTF-8, a model the text suite cannot load.
    "corpus-not-utf8": Case(
        _latin1_corpus,
        ("corpus.txt is not UTF-8: line 2, byte offset 23", "errors: replace", "iconv")),
    "eval-text-missing-model": Case(
        lambda ws: ["eval", "--suite", "text", "runs/nope"],
        ("'runs/nope' is neither a directory nor a registered model name",
         "a sentence-transformers directory")),
    # Issue 20: run and export folders that name code (the payload would create PWNED).
    "student-json-runs-code-eval": Case(
        _student_json(lambda meta, ws: {**meta, **_payload(ws)}, "eval"),
        ("student.json names the model 'os:system' by import path", "--allow-import os")),
    "student-json-runs-code-export": Case(
        _student_json(lambda meta, ws: {**meta, **_payload(ws)}, "export", "--format", "onnx"),
        ("student.json names the model 'os:system' by import path",)),
    "student-json-runs-code-bench": Case(
        _student_json(lambda meta, ws: {**meta, **_payload(ws)}, "bench", "--repeats", "1"),
        ("student.json names the model 'os:system' by import path",)),
    "config-teacher-runs-code": Case(
        _config_teacher_runs_code,
        ("config.yaml names the model 'os:system' by import path",)),
    "model-json-runs-code": Case(
        _model_json(lambda meta, ws: {**meta, **_payload(ws)}),
        ("model.json names the model 'os:system' by import path",)),
    "student-json-malformed": Case(
        _student_json(lambda meta, ws: [meta], "eval"),
        ("student.json",)),
    "student-json-no-checksum": Case(
        _student_json(lambda meta, ws: {k: v for k, v in meta.items() if k != "sha256"}, "eval"),
        ("student.json", "sha256")),
    "model-json-malformed": Case(
        _model_json(lambda meta, ws: {**meta, "outputs": 3}),
        ("model.json",)),
    "store-foreign-shard": Case(
        _foreign_shard, ("shard-00001.safetensors",)),
    # Issue 20: names, YAML and numbers out of range.
    # `--name ..` wrote the run into output.dir's parent (here runs/, with the user's eval.json)
    "name-dotdot": Case(
        _name_dotdot(), ("name: '..' is not a run name", "hint:", "--name NEW")),
    "name-dotdot-resume": Case(
        _name_dotdot("--resume"), ("name: '..' is not a run name", "hint:")),
    "name-300-characters": Case(
        _run(None, "teacher.yaml", "--name", "n" * 300),
        ("name: a run name has at most 100 characters, this one 300", "(got 'nnnn", "n…n")),
    "yaml-duplicate-key": Case(
        _run_text("name: a\nseed: 1\nseed: 2\n"),
        ("bad.yaml:3: key 'seed' appears twice in one mapping (lines 2 and 3)",)),
    "yaml-billion-laughs": Case(
        _run_text("name: a\nx: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\ny: &b [*a, *a, *a, *a, *a, *a]\n"),
        ("bad.yaml:2: YAML anchor &a is not allowed", "write the value out")),
    # seed=1e23, device tpu9 and batch_size=1e20 were tracebacks (the last left a run folder)
    "seed-device-batch": Case(
        _run({"seed": 1.0e23, "train.device": "tpu9", "data.batch_size": 1.0e20}),
        ("seed: ", "allowed: 0..4294967295 (got 1e+23)",
         "train.device: not a device name: use auto, cpu, cuda, cuda:N or mps (got 'tpu9')",
         "data.batch_size: ", "allowed: 1..16777216 (got 1e+20)")),
    "seed-negative": Case(_run({"seed": -1}), ("seed: ", "allowed: 0..4294967295 (got -1)")),
    "loss-weights-all-zero": Case(_run({"losses": [{"name": "ce", "weight": 0}]}), ("losses",)),
    "loss-weight-infinite": Case(_run({"losses.0.weight": float("inf")}), ("weight",)),
    # Issue 20: data and weights that cannot train, found before a run folder exists.
    "empty-dataset": Case(_no_examples, ("no examples",)),
    "images-1x1": Case(
        _run({"student.pipeline": [{"name": "resize", "params": {"size": 1}}]}),
        ("the student (model 'cnn', a SmallCNN) cannot run", "Output size is too small")),
    "int8-teacher-weights": Case(_teacher_weights(_to_int8), ("int8",)),
    "nan-teacher-weights": Case(_teacher_weights(_nan_in_first), ("NaN",)),
    "weights-a-folder": Case(
        lambda ws: _run({"teacher.weights": str(ws.root)}, "kd.yaml")(ws),
        ("is a folder",)),
    "idx-huge-header": Case(_huge_idx, ("4294967295", "bytes")),
}
# fmt: on


def _params(names: list[str]) -> list[Any]:
    return [pytest.param(n, id=n) for n in names]


# ------------------------------------------------------------------------------- running


@dataclass
class Outcome:
    ws: Workspace
    before: dict[str, str]
    after: dict[str, str]
    result: subprocess.CompletedProcess
    stderr: str  # whitespace collapsed


WORKERS = min(4, (os.cpu_count() or 2) + 1)  # commands at once


def _prepare(
    names: list[str], tmp_path_factory: pytest.TempPathFactory, teacher_run: Path, suffix: str
) -> dict[str, tuple[Workspace, list[str], dict[str, str]]]:
    """Each case's workspace, command line and snapshot of ``runs/`` before the command."""
    prepared = {}
    for name in names:
        ws = Workspace(tmp_path_factory.mktemp(name + suffix), teacher_run / "student.safetensors")
        shutil.copytree(teacher_run, ws.runs / "previous")
        args = CASES[name].setup(ws)
        prepared[name] = (ws, args, tree_hashes(ws.runs))
    return prepared


def _outcomes(
    prepared: dict[str, tuple[Workspace, list[str], dict[str, str]]],
    results: list[subprocess.CompletedProcess],
) -> dict[str, Outcome]:
    return {
        name: Outcome(ws, before, tree_hashes(ws.runs), result, squash(result.stderr))
        for (name, (ws, _, before)), result in zip(prepared.items(), results, strict=True)
    }


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    digits_teacher_run: Path,
    forked_cli: ForkedCli,
) -> dict[str, Outcome]:
    """Prepare every selected case, run their commands concurrently, snapshot before/after."""
    selected = {
        item.callspec.params["case"]
        for item in request.session.items
        if item.module is request.module
        and hasattr(item, "callspec")
        and "case" in item.callspec.params
    }
    names = [n for n in CASES if n in selected] or list(CASES)
    prepared = _prepare(names, tmp_path_factory, digits_teacher_run, "")
    commands = [(args, ws.root) for ws, args, _ in prepared.values()]
    return _outcomes(prepared, forked_cli.many(commands, workers=WORKERS))


# Fresh interpreters for a few cases: a clean error from the library, one from click's own
# option parsing, and a model imported from the working directory.
FRESH = ["misspelt-loss", "bad-set", "model-module-syntax-error"]


@pytest.fixture(scope="module")
def fresh_outcomes(
    tmp_path_factory: pytest.TempPathFactory, digits_teacher_run: Path
) -> dict[str, Outcome]:
    """The FRESH cases, each run by ``python -m crossdistill`` in a new interpreter."""
    prepared = _prepare(FRESH, tmp_path_factory, digits_teacher_run, "-fresh")
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = list(pool.map(lambda p: run_cli(p[1], cwd=p[0].root), prepared.values()))
    return _outcomes(prepared, results)


# ------------------------------------------------------------------------------- checks


def _check_clear_message(out: Outcome, case: str) -> None:
    stderr = out.result.stderr
    assert "Traceback" not in stderr, stderr
    assert out.result.returncode == 2, stderr
    assert "error:" in stderr
    for phrase in CASES[case].phrases:
        assert phrase in out.stderr, f"{phrase!r} not in: {out.stderr}"
    # No payload of a run or export folder ran.
    assert not list(out.ws.root.rglob("PWNED")), "code named by a folder was executed"
    # Nothing that existed before was changed or removed.
    changed = [p for p, h in out.before.items() if out.after.get(p) != h]
    assert not changed, f"pre-existing files changed: {changed}"


@pytest.mark.parametrize("case", _params(list(CASES)))
def test_bad_input_is_one_clear_message(outcomes: dict[str, Outcome], case: str) -> None:
    _check_clear_message(outcomes[case], case)


@pytest.mark.parametrize("case", FRESH)
def test_fresh_interpreter_gives_the_same_outcome(
    outcomes: dict[str, Outcome], fresh_outcomes: dict[str, Outcome], case: str
) -> None:
    """The fork server changes nothing a user sees: a new interpreter prints the same message
    (workspace paths aside) with the same exit code, and leaves the same files."""
    fresh, forked = fresh_outcomes[case], outcomes[case]
    _check_clear_message(fresh, case)
    assert fresh.result.returncode == forked.result.returncode
    assert fresh.stderr.replace(str(fresh.ws.root), "WS") == forked.stderr.replace(
        str(forked.ws.root), "WS"
    )
    assert fresh.result.stdout == forked.result.stdout
    assert sorted(set(fresh.after) - set(fresh.before)) == sorted(
        set(forked.after) - set(forked.before)
    )


@pytest.mark.parametrize("case", _params([n for n, c in CASES.items() if c.before_training]))
def test_no_run_directory_is_left_behind(outcomes: dict[str, Outcome], case: str) -> None:
    out = outcomes[case]
    assert out.result.returncode != 0
    new = sorted(set(out.after) - set(out.before))
    assert not new, f"left behind: {new}"


@pytest.mark.parametrize("case", ["non-finite"])
def test_non_finite_keeps_the_last_good_checkpoint(outcomes: dict[str, Outcome], case: str) -> None:
    out = outcomes[case]
    run_dir = out.ws.runs / "diverges"
    assert out.result.returncode == 2
    checkpoints = list_checkpoints(Run(run_dir).checkpoints)
    assert [p.name for p in checkpoints] == ["epoch-0001"]
    assert str(checkpoints[0]) in out.stderr
    state = load_checkpoint(checkpoints[0])  # checksums verified
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["trainable"].values())
    assert not (run_dir / "student.safetensors").exists()
    last = (run_dir / "metrics.jsonl").read_text().splitlines()[-1]
    assert '"kind": "error"' in last


@pytest.mark.parametrize("case", ["corrupt-checkpoint"])
def test_corrupt_checkpoint_names_the_file(outcomes: dict[str, Outcome], case: str) -> None:
    out = outcomes[case]
    assert str(out.ws.notes["corrupted"]) in out.stderr
    assert "delete" in out.stderr  # the hint says how to go back to an earlier checkpoint


@pytest.mark.parametrize("case", ["run-dir-exists"])
def test_existing_run_directory_is_untouched(outcomes: dict[str, Outcome], case: str) -> None:
    out = outcomes[case]
    assert out.before == out.after
    assert "runs/previous" in out.stderr or str(out.ws.runs / "previous") in out.stderr


@pytest.mark.parametrize("case", ["resume-pickled-checkpoint"])
def test_pickled_checkpoint_names_the_file(outcomes: dict[str, Outcome], case: str) -> None:
    out = outcomes[case]
    assert str(out.ws.notes["pickled"]) in out.stderr
    assert not (out.ws.runs / "PWNED").exists()


# ------------------------------------------------------------------------------- in process


@pytest.mark.parametrize("rehash", [False, True], ids=["stale-checksum", "rehashed"])
def test_pickled_checkpoint_is_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rehash: bool
) -> None:
    """A checkpoint whose ``trainable.safetensors`` is a pickle with a payload is refused by
    ``load_checkpoint`` without pickle (or torch.load) ever being called, and names the file."""
    directory = save_checkpoint(
        tmp_path / "epoch-0001",
        trainable=SmallCNN(width=4).state_dict(),
        optimizer={"state": {}, "param_groups": []},
        state={"epoch": 1, "step": 1},
    )
    marker = tmp_path / "PWNED"
    target = _pickle_checkpoint(directory, marker, rehash)
    calls: list[str] = []

    def forbidden(name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} was called on a checkpoint")

        return refuse

    forbid = [(pickle, "Unpickler"), (pickle, "load"), (pickle, "loads"), (torch, "load")]
    for module, name in forbid:
        monkeypatch.setattr(module, name, forbidden(f"{module.__name__}.{name}"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    assert not calls
    assert str(target) in info.value.message
    assert not marker.exists()
    # The payload is live: unpickling the file for real runs it (a copy with a .pt name, since
    # torch.load itself reads a .safetensors name as safetensors).
    monkeypatch.undo()
    copy = shutil.copy(target, tmp_path / "trainable.pt")
    torch.load(copy, weights_only=False)
    assert marker.exists()
