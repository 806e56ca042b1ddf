"""A recipe as validated pydantic models.

``load_recipe("recipe.yaml", overrides=["train.epochs=5"])`` reads YAML, applies ``--set``
overrides and validates. Every error names the YAML path (``losses[1].params.temperature``) and
what was expected; unknown keys are refused with the closest known ones. Every number has a
range (a seed fits 32 bits, a batch is at least one example and fits in memory, weights and
rates are finite), and the YAML reader refuses duplicate keys and anchors/aliases.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pydantic
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    StrictBool,
)
from pydantic_core import PydanticCustomError

from crossdistill._util.files import write_atomic
from crossdistill._util.validation import format_validation_error, short_repr
from crossdistill.errors import ConfigError

SEED_MAX = 2**32 - 1  # what NumPy's and Python's seeding accept everywhere
MAX_SIZE = 2**24  # batch and buffer sizes: above this an allocation fails, not training
MAX_WORKERS = 1024
NAME_MAX = 100  # characters in a run name (one folder name, on every file system)
DEVICES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
_PEER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]+")

Size = Annotated[int, Field(gt=0, le=MAX_SIZE)]


class _Strict(BaseModel):
    # every float is finite: an infinite weight or rate is a typo, never a setting
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


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
                    f"{{name: {short_repr(raw['name'], 60)}, params: {{{extra[0]}: ...}}}}"
                )
        return raw


class TapSpec(_Strict):
    """A forward hook: capture ``path``'s output (or input) as ``features/<name>``."""

    name: str
    path: str
    on: Literal["output", "input"] = "output"
    select: str | int | None = None
    kind: Literal["features", "attention"] = "features"
    pool: Size | None = None  # average-pool to a pool x pool grid (or pool tokens)
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
    """One teacher (``model: ...``), an ensemble (``members: [...]``, optional weights), or a
    momentum teacher (``ema_of: student``): an exponential moving average of the student's
    weights, updated after every optimizer step and never trained by the optimizer (mean
    teacher, Tarvainen & Valpola 2017, arXiv:1703.01780; ALBEF's momentum distillation).

    A momentum teacher is the student's model, params, pipeline and outputs; only ``taps:`` may
    be given for it (feature losses against the average's features). ``decay`` is the weight
    of the old average in each update; with ``warmup`` (default) update ``t`` (from 0) uses
    ``min(decay, (1 + t) / (10 + t))``, so the early average follows the quickly changing
    student instead of its random initialisation (as TensorFlow's ExponentialMovingAverage
    with ``num_updates``)."""

    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    weights: Path | WeightsSpec | None = None
    outputs: list[str] | dict[str, str] = Field(default_factory=lambda: ["logits"])
    taps: list[TapSpec] = Field(default_factory=list)
    pipeline: list[PluginSpec] = Field(default_factory=list)
    members: list[ModelSpec] = Field(default_factory=list)
    member_weights: list[Annotated[float, Field(ge=0)]] | None = None
    ema_of: Literal["student"] | None = None  # a momentum teacher: the average of the student
    # the momentum teacher's decay: the weight of the old average in each update, in (0, 1)
    decay: float = 0.999
    warmup: bool = True  # the momentum teacher's decay ramps up as min(decay, (1+t)/(10+t))
    # the keys of a momentum teacher; left out of the dump of any other teacher
    momentum_keys: ClassVar[tuple[str, ...]] = ("ema_of", "decay", "warmup")

    @pydantic.model_validator(mode="after")
    def _one_kind(self) -> TeacherSpec:
        kinds = [self.model is not None, bool(self.members), self.ema_of is not None]
        if sum(kinds) != 1:
            raise ValueError(
                "give exactly one of `model:` (one teacher), `members:` (an ensemble) or "
                "`ema_of: student` (a momentum teacher)"
            )
        if not 0 < self.decay < 1:  # 0 copies the student, 1 never moves: neither teaches
            raise ValueError(f"decay {self.decay} must lie strictly between 0 and 1 (e.g. 0.999)")
        if self.ema_of is not None:
            # compared with the defaults, not "was it given": a run's config.yaml has them all
            given = [
                key
                for key in ("params", "weights", "outputs", "pipeline")
                if getattr(self, key)
                != type(self).model_fields[key].get_default(call_default_factory=True)
            ]
            if given:
                raise ValueError(
                    f"a momentum teacher (`ema_of: student`) is the student's own model: remove "
                    f"{given} from `teacher:` (only `taps:`, `decay:` and `warmup:` apply)"
                )
        elif self.model_fields_set & {"decay", "warmup"}:
            raise ValueError("`decay:` and `warmup:` apply to a momentum teacher (`ema_of:`) only")
        return self

    @pydantic.model_serializer(mode="wrap")
    def _without_momentum(self, handler: pydantic.SerializerFunctionWrapHandler) -> Any:
        # a teacher that is not a momentum teacher dumps as before these keys existed: the
        # fingerprints of existing runs and knowledge stores stay what they were
        data = handler(self)
        if self.ema_of is None and isinstance(data, dict):
            for key in self.momentum_keys:
                data.pop(key, None)
        return data

    def as_model_spec(self) -> ModelSpec:
        return ModelSpec(
            **self.model_dump(exclude={"members", "member_weights", *self.momentum_keys})
        )


class AnnealSpec(_Strict):
    """A value that moves from ``start`` to ``end`` while training runs: over the fraction
    ``over`` of all optimizer steps (before it: ``start``; after it: ``end``), along ``shape``
    (``linear``, ``cosine``: slow at both ends, or ``step``: ``start`` then ``end``)."""

    start: float  # the value before the window (and at its start)
    end: float  # the value after the window
    shape: Literal["linear", "cosine", "step"] = "linear"  # how it moves inside the window
    # the window, as fractions of all optimizer steps: [0, 1] is the whole run
    over: tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]] = (
        0.0,
        1.0,
    )

    @pydantic.model_validator(mode="after")
    def _window(self) -> AnnealSpec:
        if self.over[0] >= self.over[1]:
            raise ValueError(f"over [{self.over[0]}, {self.over[1]}] must run forwards")
        return self


class SidesSpec(_Strict):
    """Which models a loss term reads as its student and as its teacher: ``student``, a peer's
    name, or (teacher side only) ``teacher``. The term's gradient reaches the student side; a
    trainable model on the teacher side is read detached unless ``detach: false`` (Deep Mutual
    Learning treats the other peer's predictions as fixed targets)."""

    student: str = "student"  # the model the term trains: `student` or a peer's name
    teacher: str = "teacher"  # the model it learns from: `teacher`, `student` or a peer's name
    detach: bool = True  # a trainable teacher side gets no gradient from this term

    @pydantic.model_validator(mode="after")
    def _two_models(self) -> SidesSpec:
        if self.student == "teacher":
            raise ValueError(
                "the teacher is frozen: a term's student side is `student` or a peer's name"
            )
        if self.student == self.teacher:
            raise ValueError(f"student and teacher sides are both {self.student!r}")
        return self


class LossSpec(PluginSpec):
    """A loss (registered name or ``package.module:Class``), its weight in the total, and its
    hyper-parameters.

    ``adapter`` maps the student tensor the loss reads to the teacher's shape first: ``auto``
    (chosen from the two shapes), an adapter's name or import path, or ``{name, params}``.
    ``schedule`` anneals the weight (``weight:``) or a number the loss keeps (``temperature:``)
    over training: ``{temperature: {start: 8, end: 2}}``.
    """

    weight: float = Field(1.0, ge=0)
    label: str | None = None  # the name logged for this term; needed when a loss appears twice
    adapter: str | PluginSpec | None = None
    # `weight` or a number the loss keeps (temperature, ...) -> how it moves over training
    schedule: dict[str, AnnealSpec] = Field(default_factory=dict)
    # which models play the loss's student and teacher (peers); unset: student and teacher
    sides: SidesSpec | None = Field(None, exclude_if=lambda v: v is None)

    @property
    def term(self) -> str:
        return self.label or self.name

    @property
    def largest_weight(self) -> float:
        """The weight, or the largest its schedule gives (a term may warm up from 0)."""
        ramp = self.schedule.get("weight")
        return self.weight if ramp is None else max(self.weight, ramp.start, ramp.end)


class ViewSpec(_Strict):
    """A side that reads some channels of a tensor field (the channels it will have when
    deployed: the exported student's input is exactly this)."""

    field: str
    channels: list[NonNegativeInt] = Field(min_length=1)


class ValidationSpec(_Strict):
    """The validation split: what training evaluates each epoch and ``crossdistill tune``
    selects on, so that the evaluation split (the test) is read once, at the end.

    With ``fraction`` it is carved from the training split (the rest trains): a seeded draw,
    stratified by class when the targets are class labels, whole groups at a time when the
    split has groups (a speaker, a subject: never in both parts). Without ``fraction`` it is
    the data source's own split named ``split``. A number alone (``validation: 0.1``) is the
    fraction; a name alone (``validation: dev``) the source's split.
    """

    fraction: float | None = Field(None, gt=0, lt=1)  # carve this share of the training split
    split: str = "val"  # its name (the carve's, or the source's own split to read)
    seed: int = Field(0, ge=0, le=SEED_MAX)  # the draw; the recipe's seed does not move it
    stratify: bool = True  # by class label, when there are labels and no groups

    @pydantic.model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return {"fraction": raw}
        return {"split": raw} if isinstance(raw, str) else raw

    @property
    def carved(self) -> bool:
        """Whether the split is drawn from the training split (else the source's own)."""
        return self.fraction is not None


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
    augment_slots: Size | None = None
    batch_size: Size = 128
    eval_batch_size: Size = 512
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS)
    # use only N training examples, chosen as limit_mode says (all of them when N >= the split)
    limit_train: PositiveInt | None = None
    # how limit_train chooses: random (seeded by the recipe's seed, the same on every process;
    # stratified by class when the split's targets are class labels, each class keeping its
    # share) or first (the first N: what limit_train did before limit_mode existed)
    limit_mode: Literal["random", "first"] = "random"
    limit_eval: PositiveInt | None = None  # use only the first N evaluation examples, always
    # the training examples' order: shuffled afresh every epoch (seeded), or the split's own
    # order (a stream, read in the order it arrived)
    order: Literal["shuffled", "given"] = Field("shuffled", exclude_if=lambda v: v == "shuffled")
    # a validation split (a fraction of train, or the source's own split): evaluated each epoch
    # instead of eval_split, which is then read once, after the last epoch
    validation: ValidationSpec | None = None

    @pydantic.model_validator(mode="after")
    def _validation_apart(self) -> DataSpec:
        v = self.validation
        if v is not None and v.split == self.train_split:
            raise ValueError(
                f"validation.split {v.split!r} is also data.train_split: validation is a split "
                "of its own (name it `val`, or carve it from train with validation.fraction)"
            )
        return self


class StoreKeySpec(_Strict):
    """How one teacher Knowledge key is stored: dense, or top-k logits (``k`` required).

    ``tail_bits`` adds to top-k the other logits' shape: each as a code of that many bits of its
    distance below the k-th largest, over ``tail_range`` logits (see docs/store.md). Unset, they
    are left out of the recipe's fingerprint, so ``format: topk, k: N`` is what it always was.
    """

    format: Literal["dense", "topk"] = "dense"
    k: Size | None = None
    dtype: Literal["float16", "float32"] | None = None  # default: the store's dtype
    # top-k: bits (1-8) per code of each other logit, so the tail keeps its order and shape
    tail_bits: int | None = Field(None, ge=1, le=8, exclude_if=lambda v: v is None)
    # logits below the k-th largest that the codes span (default 16); farther share the last
    tail_range: PositiveFloat | None = Field(None, exclude_if=lambda v: v is None)

    @pydantic.model_validator(mode="after")
    def _k_for_topk(self) -> StoreKeySpec:
        if self.format == "topk" and self.k is None:
            raise ValueError("format: topk needs `k:` (how many logits to keep per example)")
        if self.format != "topk" and (self.tail_bits is not None or self.tail_range is not None):
            raise ValueError("tail_bits and tail_range need format: topk")
        if self.tail_range is not None and self.tail_bits is None:
            raise ValueError("tail_range needs tail_bits (how many bits per tail code)")
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
    shard_size: Size = 4096
    batch_size: Size = 256  # teacher batch size while writing
    verify: bool = True  # check each shard's SHA-256 when it is first read


class OptimizerSpec(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.999,
    )


class ScheduleSpec(_Strict):
    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[PositiveInt] = Field(default_factory=list)  # epochs, for `step`
    gamma: float = Field(0.1, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class CompileSpec(_Strict):
    """``train.compile`` as a mapping: how ``torch.compile`` compiles the training step
    (the student's forward, its adapters and the loss terms; the teacher stays eager).

    ``backend`` is a registered TorchDynamo backend (``inductor``, ``aot_eager``, ...; see
    ``torch._dynamo.list_backends()``); ``mode`` applies to ``inductor`` only. Where compiling
    fails, the run warns once and trains eagerly, unless ``strict`` (or ``fullgraph``) is set:
    then it stops with a ConfigError.
    """

    # a TorchDynamo backend: inductor (needs a C++ compiler on the CPU), aot_eager, ...
    backend: str = "inductor"
    # inductor's mode (reduce-overhead: CUDA graphs on a GPU)
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "default"
    )
    dynamic: bool | None = None  # None: torch decides (dynamic after a shape changes once)
    fullgraph: bool = False  # one graph, no graph breaks; implies strict
    strict: bool = False  # a compile failure stops the run instead of falling back to eager

    @pydantic.model_validator(mode="after")
    def _mode_needs_inductor(self) -> CompileSpec:
        if self.mode != "default" and self.backend != "inductor":
            raise ValueError(
                f"mode {self.mode!r} is an inductor setting, and the backend is "
                f"{self.backend!r}: set backend: inductor, or leave mode out"
            )
        return self

    @property
    def no_fallback(self) -> bool:
        """Whether a failure to compile stops the run (``strict`` or ``fullgraph``)."""
        return self.strict or self.fullgraph


def _compile_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "[bool]"
    return "[mapping]" if isinstance(value, (dict, CompileSpec)) else None


# true/false or a mapping; anything else (`compile: 3`) is one clear error, not one per branch
_CompileSetting = Annotated[
    Annotated[StrictBool, pydantic.Tag("[bool]")]
    | Annotated[CompileSpec, pydantic.Tag("[mapping]")],
    pydantic.Discriminator(
        _compile_kind,
        custom_error_type="compile",
        custom_error_message="train.compile is true, false or a mapping {backend, mode, dynamic, "
        "fullgraph, strict}",
    ),
]


class TrainSpec(_Strict):
    epochs: PositiveInt = 10
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    grad_clip: PositiveFloat | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps (checked against this machine later)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto = bf16/fp16 on CUDA, off on CPU
    deterministic: bool = True
    log_every: PositiveInt = 50
    keep_checkpoints: NonNegativeInt = 3
    # also checkpoint every N optimizer steps (mid-epoch), so a crash loses at most N steps
    checkpoint_every_steps: PositiveInt | None = None
    progress: bool = True
    # written while training (crossdistill.train.callbacks): jsonl, tensorboard, mlflow, wandb
    # or an import path; a name alone or {name, params}. metrics.jsonl is always written.
    loggers: list[PluginSpec] = Field(default_factory=list)
    # user code called at each step, epoch, evaluation, checkpoint: {name: pkg.mod:Class, params}
    callbacks: list[PluginSpec] = Field(default_factory=list)
    # torch.compile the student and the loss terms (crossdistill.train.compile): false, true
    # (inductor, default settings) or {backend, mode, dynamic, fullgraph, strict}. Checkpoints and
    # the exported student are the same either way; evaluation and export run eagerly.
    compile: _CompileSetting = False
    # score each training batch with the trained models before they learn from it (test, then
    # train): `prequential_accuracy` in each epoch's record (crossdistill.train.prequential)
    prequential: bool = Field(False, exclude_if=lambda v: not v)

    @property
    def compile_spec(self) -> CompileSpec | None:
        """``compile`` as a :class:`CompileSpec` (``None``: train eagerly)."""
        if self.compile is True:
            return CompileSpec()
        return self.compile or None

    @pydantic.field_validator("loggers", "callbacks", mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        # `loggers: [tensorboard]` is `[{name: tensorboard}]`
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @pydantic.field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        # the form only: whether this machine has it is checked when training starts
        # (select_device), so a run trained on a GPU still opens on a laptop
        if not _DEVICE.fullmatch(value):
            raise PydanticCustomError("device", f"not a device name: use {DEVICES}")
        return value


class EvalSpec(_Strict):
    every_epochs: NonNegativeInt = 1  # 0: only after the last epoch
    topk: PositiveInt = 5
    # with a data.validation split: also evaluate data.eval_split once, after the last epoch
    # (false: the test split is never read, as in `crossdistill tune`'s trials)
    test: bool = True


class SearchDim(_Strict):
    """One dimension of a search space: a float range (``low``, ``high``, ``log``, ``step``),
    an integer range (``integer: true``) or ``choices``."""

    low: float | None = None  # the range's lower end (included)
    high: float | None = None  # the range's upper end (included)
    log: bool = False  # sample the range on a log scale (low > 0): for lr, weights
    step: PositiveFloat | None = None  # sample only low, low + step, ... (not with log)
    integer: bool = False  # an integer range (low, high and step are whole numbers)
    # the values to choose from, instead of a range
    choices: list[Any] | None = Field(None, min_length=1)

    @pydantic.model_validator(mode="after")
    def _one_kind(self) -> SearchDim:
        ranged = self.low is not None or self.high is not None
        if (self.choices is not None) == ranged:
            raise ValueError("give either `choices: [...]` or a range `low:`/`high:`")
        if ranged:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"a range needs low < high, got low={self.low} high={self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"a log range needs low > 0, got {self.low}")
            if self.log and self.step is not None:
                raise ValueError("a range is either `log: true` or has a `step`, not both")
        return self


class TuneSpec(_Strict):
    """What ``crossdistill tune`` searches and how it scores a trial (on the validation split).

    ``space`` maps recipe keys, written as for ``--set`` (``losses.1.weight``,
    ``losses.1.params.temperature``, ``train.optimizer.lr``), to their ranges or choices;
    ``auto`` takes the built-in space of each loss in the recipe."""

    metric: str = "accuracy"  # a number of the evaluation (eval.json) on the validation split
    direction: Literal["maximize", "minimize"] = "maximize"  # minimize for a loss or an error
    # recipe keys as for --set -> range or choices; auto: the lr, the weights of the losses
    # that read the teacher, and each loss class's own search_space
    space: dict[str, SearchDim] | Literal["auto"] = "auto"
    trials: PositiveInt = 30  # trials the study should hold (--n-trials); finished ones count
    # median: stop a trial whose validation metric after an epoch is below the median of
    # earlier trials at that epoch; none: train every trial to the end
    pruner: Literal["median", "none"] = "median"
    baseline: bool = True  # also train the student without the teacher's losses, as a reference
    seed: int = Field(0, ge=0, le=SEED_MAX)  # the sampler's


class ContinualSpec(_Strict):
    """Training on a sequence of tasks, each task's model the frozen teacher of the next
    (Learning without Forgetting, Li & Hoiem 2016, arXiv:1606.09282), with an optional replay
    buffer of earlier tasks' examples; evaluated on every task after every task (the accuracy
    matrix). See docs/continual.md.

    ``scenario: class`` (class-incremental): task ``t`` holds the examples of its own classes,
    ``tasks: N`` consecutive groups of the data's classes or the groups listed
    (``[[0, 1], [2, 3]]``), which never share a class. ``scenario: domain``
    (domain-incremental): every task holds every class, from its own seeded, disjoint share of
    each split; ``shift: permute`` gives each task after the first a fixed, seeded permutation
    of every input's elements (Permuted MNIST, Goodfellow et al. 2013, arXiv:1312.6211)."""

    # class: each task its own classes; domain: every class, from each task's own share
    scenario: Literal["class", "domain"] = "class"
    # N tasks (class: N consecutive groups of the classes), or the class groups listed
    tasks: Annotated[int, Field(ge=2, le=MAX_SIZE)] | list[list[NonNegativeInt]] = 5
    # examples of earlier tasks (class-balanced, drawn by `seed`) mixed into each later task
    replay: NonNegativeInt = 0
    # the share of each later task's epoch the buffer makes up, its examples repeated to reach
    # it (experience replay draws half of every batch from the buffer); unset: each once
    replay_share: float | None = Field(None, gt=0, lt=1)
    joint: bool = False  # one model on every task's data at once: the upper bound
    seed: int = Field(0, ge=0, le=SEED_MAX)  # the domain shares, the shifts and the replay draw
    # domain only: each task after the first permutes every input's elements its own way
    shift: Literal["none", "permute"] = "none"

    @pydantic.model_validator(mode="after")
    def _tasks_apart(self) -> ContinualSpec:
        if isinstance(self.tasks, list):
            if self.scenario != "class":
                raise ValueError(
                    "tasks as class groups is for `scenario: class`; a domain-incremental "
                    "sequence gives the number of tasks (`tasks: 5`)"
                )
            if len(self.tasks) < 2 or not all(self.tasks):
                raise ValueError("tasks lists at least two groups, each of at least one class")
            held: dict[int, list[int]] = {}
            for t, group in enumerate(self.tasks, 1):
                for c in group:
                    held.setdefault(c, []).append(t)
            shared = {c: ts for c, ts in sorted(held.items()) if len(ts) > 1}
            if shared:
                where = "; ".join(f"class {c} in tasks {ts}" for c, ts in shared.items())
                raise ValueError(
                    f"class-incremental tasks never share a class: {where} (give each class "
                    "to one task, or use `scenario: domain` for tasks that all hold every class)"
                )
        if self.replay_share is not None and not self.replay:
            raise ValueError("`replay_share:` is the share of a replay buffer: set `replay:` too")
        if self.shift != "none" and self.scenario != "domain":
            raise ValueError("`shift:` moves the inputs of a domain-incremental sequence only")
        return self


class OutputSpec(_Strict):
    dir: Path = Path("runs")


class Recipe(_Strict):
    """One experiment: data, teacher (optional), student, weighted losses, training, evaluation."""

    name: str
    # modules imported before anything is built, so that their plug-ins register
    imports: list[str] = Field(default_factory=list)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    data: DataSpec
    teacher: TeacherSpec | None = None
    student: ModelSpec
    losses: list[LossSpec] = Field(min_length=1)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    store: StoreSpec | None = None
    tune: TuneSpec | None = None  # what `crossdistill tune` searches (never read by `run`)
    # trainable models beside the student (online / mutual distillation): name -> model;
    # losses read them through `sides:`, one optimizer updates all
    peers: dict[str, ModelSpec] = Field(default_factory=dict, exclude_if=lambda v: not v)
    # born-again: N runs gen1..genN, each the next one's teacher (no teacher: gen0 from labels)
    generations: PositiveInt = Field(1, exclude_if=lambda v: v == 1)
    # a sequence of tasks, each task's model the frozen teacher of the next (docs/continual.md)
    continual: ContinualSpec | None = Field(None, exclude_if=lambda v: v is None)

    @pydantic.field_validator("name")
    @classmethod
    def _one_folder(cls, value: str) -> str:
        problem = run_name_problem(value)
        if problem:
            raise PydanticCustomError("run_name", problem)
        return value

    @pydantic.field_validator("losses")
    @classmethod
    def _some_weight(cls, losses: list[LossSpec]) -> list[LossSpec]:
        if not any(loss.largest_weight > 0 for loss in losses):
            raise PydanticCustomError(
                "loss_weights", "every loss weight is 0: the student would learn nothing"
            )
        return losses

    @pydantic.model_validator(mode="after")
    def _momentum_without_store(self) -> Recipe:
        if self.store is not None and self.teacher is not None and self.teacher.ema_of:
            raise ValueError(
                "a momentum teacher (teacher.ema_of) changes with every optimizer step: there "
                "is nothing to cache in a knowledge store; remove `store:`"
            )
        return self

    @pydantic.model_validator(mode="after")
    def _peers_named(self) -> Recipe:
        for name in self.peers:
            if name in ("student", "teacher") or not _PEER_NAME.fullmatch(name):
                raise ValueError(
                    f"peer name {name!r}: a peer is named by letters, digits and `_` (not "
                    "starting with a digit), and never `student` or `teacher`, the names "
                    "those models already have"
                )
        models = ["student", *self.peers]
        for i, loss in enumerate(self.losses):
            if loss.sides is None:
                continue
            where = f"losses[{i}] ({loss.term}).sides"
            if loss.sides.student not in models:
                raise ValueError(
                    f"{where}.student {loss.sides.student!r} is not a trainable model: "
                    f"one of {models}"
                )
            if loss.sides.teacher not in [*models, "teacher"]:
                raise ValueError(
                    f"{where}.teacher {loss.sides.teacher!r} is not a model of the recipe: "
                    f"one of {[*models, 'teacher']}"
                )
        return self

    @pydantic.model_validator(mode="after")
    def _one_schedule_of_models(self) -> Recipe:
        # each of these decides where a run's teachers come from: two would contradict
        given = [
            key
            for key, on in (
                ("generations", self.generations > 1),
                ("continual", self.continual is not None),
                ("teacher.ema_of", self.teacher is not None and self.teacher.ema_of is not None),
            )
            if on
        ]
        if len(given) > 1:
            raise ValueError(
                f"{' and '.join(given)} each decide what teaches the student: use one of them"
            )
        return self

    @pydantic.model_validator(mode="after")
    def _unique_terms(self) -> Recipe:
        terms = [loss.term for loss in self.losses]
        dupes = sorted({t for t in terms if terms.count(t) > 1})
        if dupes:
            raise ValueError(f"loss terms {dupes} appear twice: give each a distinct `label:`")
        return self

    @property
    def run_dir(self) -> Path:
        """``output.dir/name``; an error when it leads out of ``output.dir`` (a link there)."""
        path = self.output.dir / self.name
        if path.resolve().parent != self.output.dir.resolve():
            raise ConfigError(
                f"run folder {path} leads outside output.dir {self.output.dir} "
                f"(to {path.resolve()})",
                hint="a run is written inside output.dir only: remove the link, or choose "
                "another name (--name NEW)",
            )
        return path

    def with_student(self, peer: str) -> Recipe:
        """The same training with peer ``peer`` and the student swapping names: the peer is the
        student here, the student a peer called ``peer`` (models, loss sides, data views). A
        peer's own run folder records this recipe: its student is what it evaluates and
        exports."""
        if peer not in self.peers:
            raise ConfigError(
                f"the recipe has no peer {peer!r}", hint=f"its peers: {sorted(self.peers)}"
            )
        swap = {"student": peer, peer: "student"}
        data = self.model_dump(mode="json")
        data["student"], data["peers"][peer] = data["peers"][peer], data["student"]
        for loss in data["losses"]:
            sides = loss.get("sides") or {}
            for role, default in (("student", "student"), ("teacher", "teacher")):
                side = sides.get(role, default)
                sides[role] = swap.get(side, side)
            loss["sides"] = sides if SidesSpec(**sides) != SidesSpec() else None
        views = data["data"]["views"]
        data["data"]["views"] = {swap.get(view, view): v for view, v in views.items()}
        return Recipe.model_validate(data)

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
    "tune": True,
    "train": {
        "device",
        "progress",
        "log_every",
        "keep_checkpoints",
        "checkpoint_every_steps",
        "loggers",
        "callbacks",
        "compile",  # the same weights up to rounding: a run resumes compiled or eager
    },
    "data": {"num_workers", "eval_split", "eval_batch_size", "limit_eval"},
}


def run_name_problem(name: str) -> str | None:
    """What makes ``name`` unfit to be a run's folder name (None when it is fine): a run name is
    one folder name inside ``output.dir``, never a path, ``.`` or ``..``."""
    if not name:
        return "a run name cannot be empty"
    if len(name) > NAME_MAX:
        return f"a run name has at most {NAME_MAX} characters, this one {len(name)}"
    if name in (".", ".."):
        return f"{name!r} is not a run name: it names output.dir itself or the folder above it"
    if "/" in name or "\\" in name:
        return "a run name is one folder name, without '/' or '\\'"
    if not _NAME_CHARS.fullmatch(name):
        return "a run name may hold only letters, digits, '_', '.' and '-'"
    return None


# ---------------------------------------------------------------------------- loading


class RecipeYAMLError(yaml.YAMLError):
    """YAML that parses but that a recipe refuses: a duplicate key, an anchor or alias."""

    def __init__(self, line: int, message: str, hint: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line, self.message, self.hint = line, message, hint


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (the later one would silently win) and
    anchors/aliases (``&a``/``*a``: a few lines of them expand to gigabytes, the "billion
    laughs"; a recipe never needs them). Reads every recipe, override and run config."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        # refusing every anchor leaves every alias undefined: yaml refuses those itself (and an
        # override such as `--set glob=*png` stays the text it was)
        event = self.peek_event()
        if not isinstance(event, yaml.AliasEvent) and getattr(event, "anchor", None) is not None:
            raise RecipeYAMLError(
                event.start_mark.line + 1,
                f"YAML anchor &{event.anchor} is not allowed in a recipe",
                hint="write the value out in full where it is used (anchors and aliases are "
                "refused: they can expand a few lines into gigabytes)",
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise RecipeYAMLError(
                    line,
                    f"key {short_repr(key, 60)} appears twice in one mapping (lines "
                    f"{seen[key]} and {line})",
                    hint="keep one of them: YAML would silently use the later one",
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, source: str) -> Any:
    """``text`` read with :class:`RecipeLoader`; errors name ``source`` and the line."""
    try:
        return yaml.load(text, Loader=RecipeLoader)  # a SafeLoader: no Python objects
    except RecipeYAMLError as exc:
        raise ConfigError(f"{source}:{exc.line}: {exc.message}", hint=exc.hint) from None
    except yaml.YAMLError as exc:
        for mark in (getattr(exc, "context_mark", None), getattr(exc, "problem_mark", None)):
            if mark is not None:  # PyYAML names the text "<unicode string>"
                mark.name = source
        raise ConfigError(
            f"{source} is not valid YAML: {exc}",
            hint="fix the line and column named above (check indentation, brackets, quotes)",
        ) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} does not exist", hint="check the path")
    raw = read_yaml(path.read_text(), str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, not {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_recipe(raw, source=str(path))


# hints for the recipe's own checks, by pydantic error type
_HINTS = {
    "run_name": "choose another name (`name:` in the recipe, or --name NEW): one folder name of "
    f"letters, digits, '_', '.' and '-', at most {NAME_MAX} characters",
    "loss_weights": "give at least one loss a weight above 0",
    "device": f"set train.device to one of {DEVICES}",
    "compile": "e.g. train.compile: true, or {backend: inductor, mode: default}; "
    "--set train.compile=false trains eagerly",
}


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        hint = next((_HINTS[e["type"]] for e in errors if e["type"] in _HINTS), None)
        if hint is None and any(e["type"] not in ("extra_forbidden", "missing") for e in errors):
            hint = (
                f"change the values named above in {source}, or override one with --set KEY=VALUE"
            )
        raise ConfigError(
            f"{source} is not a valid recipe:\n{format_validation_error(exc, model=Recipe)}",
            hint=hint,
        ) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML; list items by index: ``losses.1.weight=2``,
    or as error messages name them, ``losses[1].weight=2``)."""
    key, sep, text = item.partition("=")
    key = re.sub(r"\[([0-9]+)\]", r".\1", key)
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not KEY=VALUE", hint="e.g. --set train.epochs=5")
    try:
        value = yaml.load(text, Loader=RecipeLoader)  # a SafeLoader: no Python objects
    except RecipeYAMLError as exc:
        raise ConfigError(
            f"override {short_repr(item, 80)}: {exc.message}", hint=exc.hint
        ) from None
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
