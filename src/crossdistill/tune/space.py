"""The search space of a study: the recipe's ``tune.space`` (or the built-in one, ``auto``),
checked against the recipe before any trial trains, sampled per trial, and applied as the
same ``--set`` overrides a user would type.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from crossdistill.config import Recipe, SearchDim, apply_override, validate_recipe
from crossdistill.errors import ConfigError, CrossDistillError
from crossdistill.losses import LOSSES
from crossdistill.registry import import_modules, params_model, validate_params

# the lr and the weights of the teacher's terms: a log range of a factor SPREAD either side of
# the recipe's value (a decade each way covers the usual mistakes without wasting trials)
SPREAD = 10.0
# choices optuna stores as they are; anything else (a list of layers) is stored as JSON text
_PLAIN = (type(None), bool, int, float, str)


def reads_teacher(recipe: Recipe, index: int) -> bool:
    """Whether the recipe's loss ``index`` reads the teacher's Knowledge (built to ask it: a
    loss's needs may depend on its params)."""
    spec = recipe.losses[index]
    loss = LOSSES.build(spec.name, spec.params, where=f"losses.{index}")
    return bool(loss.needs().teacher)


def auto_space(recipe: Recipe) -> dict[str, SearchDim]:
    """The built-in space of ``recipe``.

    - ``train.optimizer.lr``: log range, a decade either side of the recipe's lr;
    - the weight of each term that reads the teacher: log range, a decade either side of its
      weight (0.1 when the recipe has it at 0). Terms that do not read the teacher (the
      supervised ones) keep their weights: the total's scale is the lr's job, so searching
      every weight would only add a direction that changes nothing. When every term reads
      the teacher, the first one is held fixed for the same reason;
    - ``losses.<i>.params.<p>`` for each entry of the loss class's ``search_space``, unless
      the loss's ``schedule:`` moves ``p`` (training sets it every step: the value searched
      would never be used).
    """
    import_modules(recipe.imports)
    space: dict[str, SearchDim] = {}
    lr = recipe.train.optimizer.lr
    space["train.optimizer.lr"] = SearchDim(low=lr / SPREAD, high=lr * SPREAD, log=True)
    teacher_terms = [i for i in range(len(recipe.losses)) if reads_teacher(recipe, i)]
    if len(teacher_terms) == len(recipe.losses):
        teacher_terms = teacher_terms[1:]  # the first one sets the scale
    for i, spec in enumerate(recipe.losses):
        if i in teacher_terms:
            weight = spec.weight or 0.1
            space[f"losses.{i}.weight"] = SearchDim(
                low=weight / SPREAD, high=weight * SPREAD, log=True
            )
        cls = LOSSES.resolve(spec.name, f"losses.{i}")
        for param, dim in getattr(cls, "search_space", {}).items():
            if param in spec.schedule:
                continue
            key = f"losses.{i}.params.{param}"
            try:
                space[key] = SearchDim.model_validate(dim)
            except Exception as exc:  # a plug-in's own declaration: say whose
                raise ConfigError(
                    f"the search_space of loss {spec.name!r} declares {param!r} as {dim!r}: {exc}",
                    hint="fix the loss class's search_space, or give tune.space explicitly",
                ) from None
    return space


def resolve_space(recipe: Recipe) -> dict[str, SearchDim]:
    """The space a study searches: ``tune.space``, or :func:`auto_space` when it is ``auto``
    (or there is no ``tune:`` section); every key checked with :func:`check_space`."""
    given = recipe.tune.space if recipe.tune is not None else "auto"
    space = auto_space(recipe) if given == "auto" else dict(given)
    if not space:
        raise ConfigError(
            "tune.space is empty: there is nothing to search",
            hint="name recipe keys and their ranges, e.g. "
            "tune.space: {train.optimizer.lr: {low: 0.01, high: 1, log: true}}",
        )
    check_space(recipe, space)
    return space


def _exists(raw: Any, key: str) -> bool:
    node = raw
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def check_space(recipe: Recipe, space: dict[str, SearchDim]) -> None:
    """Refuse a key that is not a key of the recipe, before any trial trains.

    A key is the recipe's when the resolved recipe has it (defaults included), or when it
    is a parameter ``losses.<i>.params.<p>`` that loss accepts. Each key is then set to an
    end of its range (each choice) and the recipe validated, so that a value the recipe
    refuses fails here, naming the key.
    """
    resolved = recipe.model_dump(mode="json")
    for key, dim in space.items():
        parts = key.split(".")
        if not _exists(resolved, key):
            is_loss_param = (
                len(parts) == 4
                and parts[0] == "losses"
                and parts[2] == "params"
                and _exists(resolved, ".".join(parts[:2]))
            )
            if not is_loss_param or not _accepts(recipe, int(parts[1]), parts[3]):
                raise ConfigError(
                    f"tune.space key {key!r} is not a key of the recipe",
                    hint="write keys as for --set (losses.1.weight, losses.1.params.temperature, "
                    "train.optimizer.lr); a key the recipe leaves at a default that is not shown "
                    "must be set in the recipe first",
                )
        ends = dim.choices if dim.choices is not None else [dim.low, dim.high]
        for value in ends:
            if dim.integer and value is not None:
                value = int(value)
            sampled_recipe(recipe, {key: value}, where=f"tune.space key {key!r} = {value!r}")


def _accepts(recipe: Recipe, index: int, param: str) -> bool:
    cls = LOSSES.resolve(recipe.losses[index].name, f"losses.{index}")
    model = params_model(cls)
    return param in model.model_fields or model.model_config.get("extra") == "allow"


def suggest(trial: Any, space: dict[str, SearchDim]) -> dict[str, Any]:
    """One value per key of ``space``, asked of the optuna ``trial``; choices that optuna
    cannot store (lists, mappings) travel as JSON text and come back as values."""
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.choices is not None:
            if all(isinstance(c, _PLAIN) for c in dim.choices):
                values[key] = trial.suggest_categorical(key, dim.choices)
            else:
                texts = [json.dumps(c, sort_keys=True) for c in dim.choices]
                values[key] = json.loads(trial.suggest_categorical(key, texts))
        elif dim.integer:
            assert dim.low is not None and dim.high is not None  # SearchDim checked a range
            step = int(dim.step or 1)
            values[key] = trial.suggest_int(
                key, int(dim.low), int(dim.high), step=step, log=dim.log
            )
        else:
            assert dim.low is not None and dim.high is not None
            values[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return values


def stored_values(params: dict[str, Any], space: dict[str, SearchDim]) -> dict[str, Any]:
    """A finished trial's ``params`` (as optuna stores them) as recipe values."""
    out = {}
    for key, value in params.items():
        dim = space.get(key)
        choices = dim.choices if dim is not None and dim.choices is not None else []
        plain = all(isinstance(c, _PLAIN) for c in choices)
        out[key] = value if plain else json.loads(value)
    return out


def overrides(values: dict[str, Any]) -> list[str]:
    """``values`` as ``--set`` items (JSON is YAML: the value reads back as it was)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def sampled_recipe(recipe: Recipe, values: dict[str, Any], where: str = "") -> Recipe:
    """``recipe`` with ``values`` set, validated: a value the recipe refuses, or a loss
    parameter the loss does not take, is a ConfigError that names ``where`` (the trial)."""
    raw = copy.deepcopy(recipe.model_dump(mode="json"))
    try:
        for item in overrides(values):
            apply_override(raw, item)
        changed = validate_recipe(raw, source=where or "the sampled recipe")
        for i, spec in enumerate(changed.losses):
            if any(k.startswith(f"losses.{i}.") for k in values):
                cls = LOSSES.resolve(spec.name, f"losses.{i}")
                validate_params(cls, spec.params, f"losses.{i}", f"loss {spec.name!r}", {})
    except CrossDistillError as exc:
        if not where:
            raise
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None
    return changed


def describe(values: dict[str, Any]) -> str:
    """``key=value`` pairs for a progress line, numbers to 4 significant digits."""

    def short(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else json.dumps(v)

    return " ".join(f"{k}={short(v)}" for k, v in values.items())
