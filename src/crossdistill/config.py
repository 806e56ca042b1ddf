"""A recipe as validated pydantic models.

``load_recipe("recipe.yaml", overrides=["train.epochs=5"])`` reads YAML, applies ``--set``
overrides and validates. Every error names the YAML path (``losses[1].params.temperature``) and
what was expected; unknown keys are refused with the closest known ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt

from crossdistill._util.files import write_atomic
from crossdistill._util.validation import format_validation_error
from crossdistill.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class PluginSpec(_Strict):
    """A plug-in: a registered name or ``package.module:Attribute``, and its parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _params_nested(cls, raw: Any) -> Any:
        # the one spelling mistake everybody makes: parameters beside the name
        if isinstance(raw, dict) and "name" in raw:
            extra = sorted(set(raw) - set(cls.model_fields))
            if extra and cls is PluginSpec:
                raise ValueError(
                    f"{extra} belong under `params:` (every plug-in is {{name, params}}), e.g. "
                    f"{{name: {raw['name']}, params: {{{extra[0]}: ...}}}}"
                )
        return raw


class TapSpec(_Strict):
    """A forward hook: capture ``path``'s output (or input) as ``features/<name>``."""

    name: str
    path: str
    on: Literal["output", "input"] = "output"
    select: str | int | None = None
    kind: Literal["features", "attention"] = "features"
    pool: PositiveInt | None = None  # average-pool to a pool x pool grid (or pool tokens)
    # how the captured tensor is laid out (batch first): a 2-D map, a 1-D map over time,
    # tokens, or a vector; unset, adapters read it from the rank and refuse to guess
    layout: Literal["NCHW", "NCT", "NLD", "ND"] | None = None


class WeightsSpec(_Strict):
    """A weights file and how its keys map onto the model's: a ``.safetensors`` file, or a
    PyTorch ``.pt``/``.pth`` state dict (read with ``torch.load(weights_only=True)``: tensors
    only, never a pickled model)."""

    path: Path
    key: str | None = None  # the entry of a checkpoint dict holding the state dict
    strip_prefix: str | None = None  # e.g. "module." (DataParallel) or "model."
    rename: dict[str, str] = Field(default_factory=dict)  # key prefix in the file -> the model's
    strict: bool = True  # every model tensor must be in the file, and nothing else


class ModelSpec(_Strict):
    """A model by registered name or ``package.module:Callable``, with its pipeline and taps."""

    model: str
    params: dict[str, Any] = Field(default_factory=dict)
    weights: Path | WeightsSpec | None = None
    outputs: list[str] | dict[str, str] = Field(default_factory=lambda: ["logits"])
    taps: list[TapSpec] = Field(default_factory=list)
    pipeline: list[PluginSpec] = Field(default_factory=list)


class TeacherSpec(_Strict):
    """One teacher (``model: ...``) or an ensemble (``members: [...]``, optional weights)."""

    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    weights: Path | WeightsSpec | None = None
    outputs: list[str] | dict[str, str] = Field(default_factory=lambda: ["logits"])
    taps: list[TapSpec] = Field(default_factory=list)
    pipeline: list[PluginSpec] = Field(default_factory=list)
    members: list[ModelSpec] = Field(default_factory=list)
    member_weights: list[float] | None = None

    @pydantic.model_validator(mode="after")
    def _one_kind(self) -> TeacherSpec:
        if (self.model is None) == (not self.members):
            raise ValueError("give either `model:` (one teacher) or `members:` (an ensemble)")
        return self

    def as_model_spec(self) -> ModelSpec:
        return ModelSpec(**self.model_dump(exclude={"members", "member_weights"}))


class LossSpec(PluginSpec):
    """A loss (registered name or ``package.module:Class``), its weight in the total, and its
    hyper-parameters.

    ``adapter`` maps the student tensor the loss reads to the teacher's shape first: ``auto``
    (chosen from the two shapes), an adapter's name or import path, or ``{name, params}``.
    """

    weight: float = Field(1.0, ge=0)
    label: str | None = None  # the name logged for this term; needed when a loss appears twice
    adapter: str | PluginSpec | None = None

    @property
    def term(self) -> str:
        return self.label or self.name


class ViewSpec(_Strict):
    """A side that reads some channels of a tensor field (the channels it will have when
    deployed: the exported student's input is exactly this)."""

    field: str
    channels: list[NonNegativeInt] = Field(min_length=1)


class DataSpec(_Strict):
    """The data: a source (a registered name or ``package.module:Callable`` returning a Split)
    and its params, which splits train and evaluate, augmentation and batching."""

    source: str
    params: dict[str, Any] = Field(default_factory=dict)
    train_split: str = "train"
    eval_split: str = "test"
    # what each side reads, when the split's own sides are not it: a field, a list of fields
    # (a dict view), or {field, channels} (a subset of a tensor field's first axis)
    views: dict[str, str | list[str] | ViewSpec] = Field(default_factory=dict)
    augment: PluginSpec | None = None
    # K recorded augmentations per example (one picked per epoch); what a knowledge store holds
    augment_slots: PositiveInt | None = None
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 512
    num_workers: NonNegativeInt = 0
    limit_train: PositiveInt | None = None  # use only the first N training examples
    limit_eval: PositiveInt | None = None


class StoreKeySpec(_Strict):
    """How one teacher Knowledge key is stored: dense, or top-k logits (``k`` required)."""

    format: Literal["dense", "topk"] = "dense"
    k: PositiveInt | None = None
    dtype: Literal["float16", "float32"] | None = None  # default: the store's dtype

    @pydantic.model_validator(mode="after")
    def _k_for_topk(self) -> StoreKeySpec:
        if self.format == "topk" and self.k is None:
            raise ValueError("format: topk needs `k:` (how many logits to keep per example)")
        return self


class StoreSpec(_Strict):
    """A knowledge store of the teacher's outputs on the training data (``crossdistill cache``).

    It holds every teacher key the losses read; ``keys`` sets the format of some of them.
    Without ``teacher:`` the run trains from a store written elsewhere (``crossdistill cache``
    with the teacher, or ``crossdistill.cache`` in Python), checked against the data only.
    With ``eval_path`` the teacher's outputs on the evaluation split are cached too, and every
    evaluation (while training, and ``crossdistill eval`` later) reads them instead of running
    the teacher.
    """

    path: Path
    eval_path: Path | None = None
    dtype: Literal["float16", "float32"] = "float16"
    keys: dict[str, StoreKeySpec] = Field(default_factory=dict)
    shard_size: PositiveInt = 4096
    batch_size: PositiveInt = 256  # teacher batch size while writing
    verify: bool = True  # check each shard's SHA-256 when it is first read


class OptimizerSpec(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleSpec(_Strict):
    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[PositiveInt] = Field(default_factory=list)  # epochs, for `step`
    gamma: float = Field(0.1, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainSpec(_Strict):
    epochs: PositiveInt = 10
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    grad_clip: PositiveFloat | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto = bf16/fp16 on CUDA, off on CPU
    deterministic: bool = True
    log_every: PositiveInt = 50
    keep_checkpoints: NonNegativeInt = 3
    # also checkpoint every N optimizer steps (mid-epoch), so a crash loses at most N steps
    checkpoint_every_steps: PositiveInt | None = None
    progress: bool = True


class EvalSpec(_Strict):
    every_epochs: NonNegativeInt = 1  # 0: only after the last epoch
    topk: PositiveInt = 5


class OutputSpec(_Strict):
    dir: Path = Path("runs")


class Recipe(_Strict):
    """One experiment: data, teacher (optional), student, weighted losses, training, evaluation."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    # modules imported before anything is built, so that their plug-ins register
    imports: list[str] = Field(default_factory=list)
    seed: int = 0
    data: DataSpec
    teacher: TeacherSpec | None = None
    student: ModelSpec
    losses: list[LossSpec] = Field(min_length=1)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    store: StoreSpec | None = None

    @pydantic.model_validator(mode="after")
    def _unique_terms(self) -> Recipe:
        terms = [loss.term for loss in self.losses]
        dupes = sorted({t for t in terms if terms.count(t) > 1})
        if dupes:
            raise ValueError(f"loss terms {dupes} appear twice: give each a distinct `label:`")
        return self

    @property
    def run_dir(self) -> Path:
        return self.output.dir / self.name

    def fingerprint(self) -> str:
        """A short hash of what determines the trained weights (checked when resuming).

        Settings that do not change the result — where outputs go, logging, progress, device,
        data-loading workers, evaluation — are left out, so a run can be resumed with them
        changed.
        """
        data = self.model_dump(mode="json", exclude=_NOT_FINGERPRINTED)
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_NOT_FINGERPRINTED: dict[str, Any] = {
    "name": True,
    "store": {"path", "eval_path", "shard_size", "batch_size", "verify"},
    "output": True,
    "eval": True,
    "train": {"device", "progress", "log_every", "keep_checkpoints", "checkpoint_every_steps"},
    "data": {"num_workers", "eval_split", "eval_batch_size", "limit_eval"},
}


# ---------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} does not exist", hint="check the path")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, not {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_recipe(raw, source=str(path))


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ConfigError(
            f"{source} is not a valid recipe:\n{format_validation_error(exc, model=Recipe)}"
        ) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML; list items by index: ``losses.1.weight=2``)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not KEY=VALUE", hint="e.g. --set train.epochs=5")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_index(part, node, where)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {item!r}: {where} is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_index(last, node, key)] = value
    else:
        node[last] = value


def _index(part: str, items: list[Any], where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"override path {where!r}: {part!r} is not an index below {len(items)}")
    return int(part)


def dump_recipe(recipe: Recipe, path: Path) -> None:
    """Write the resolved recipe as YAML (what the run actually used), atomically."""
    write_atomic(path, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
