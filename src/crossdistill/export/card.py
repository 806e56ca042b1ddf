"""The model card: ``README.md`` in every export folder, written from the run and the export.

It says what the student is (model, parameter count, size on disk, format, int8/float16), what
goes in (``preprocessing.json``), who taught it (the teacher's model and weights file, or the
knowledge store), on what data, with which losses and training settings, how it scored on the
recipe's evaluation split (``eval.json``), how closely the exported file matches the trained
student (``parity.json``), its intended use and limits, how to load it without crossdistill (the
format's :meth:`~crossdistill.export.base.Exporter.usage` snippet), and the recipe itself.

What the run did not record is written as "not recorded"; values are escaped for Markdown and
clipped. A format with its own card mechanism (sentence-transformers) writes ``README.md``
first; these sections are then appended to it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from crossdistill._util.hashing import sha256_file
from crossdistill.export.base import Exporter
from crossdistill.registry import plugin_name
from crossdistill.runs import Run

CARD = "README.md"
NOT_RECORDED = "not recorded"
CLIP = 200  # characters of one value in a table or a list
RECIPE_CLIP = 20_000  # characters of config.yaml shown

LIMITATIONS = (
    "This student was distilled from the teacher named above: it imitates that teacher, "
    "including its biases and its mistakes, and is usually somewhat less accurate. It was "
    "evaluated only on the split named under Evaluation ({split!r} of the data source "
    "{source!r}); on data unlike that split (another domain, language, sensor, resolution or "
    "class set) its behaviour is unknown. Check it on your own data before relying on it, "
    "and do not use it for decisions about people without such a check."
)


# ----------------------------------------------------------------------------- formatting


def md(value: Any, clip: int = CLIP) -> str:
    """``value`` as one line of Markdown text: table pipes, HTML and backticks escaped, newlines
    flattened, clipped to ``clip`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    if len(text) > clip:
        text = text[: clip - 1] + "…"
    for raw, escaped in (("\\", "\\\\"), ("|", "\\|"), ("`", "\\`"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(raw, escaped)
    return text


def _code(value: Any, clip: int = CLIP) -> str:
    """``value`` as inline code (clipped; a backtick inside becomes a quote)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split()).replace("`", "'")
    return f"`{text[: clip - 1] + '…' if len(text) > clip else text}`"


def _number(value: Any) -> str:
    """A metric as written in its JSON file: floats in full (round-trip) precision."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return md(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value)


def _size(n: int) -> str:
    """``n`` bytes in KiB/MiB/GiB, with the exact count."""
    if n < 1024:
        return f"{n} bytes"
    exp = min(int(math.log(n, 1024)), 3)
    return f"{n / 1024**exp:.1f} {('KiB', 'MiB', 'GiB')[exp - 1]} ({n:,} bytes)"


def fence(text: str, lang: str = "") -> str:
    """``text`` in a code fence longer than any run of backticks inside it."""
    longest = max((len(m) for m in re.findall(r"^\s*(`{3,})", text, flags=re.M)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def _rows(pairs: list[tuple[str, Any]]) -> str:
    """A two-column Markdown list of ``- **key**: value`` lines."""
    return "\n".join(f"- **{key}**: {value}" for key, value in pairs)


# ----------------------------------------------------------------------------- facts


def _folder_bytes(folder: Path) -> int:
    """Bytes of the files in the export folder (the card itself excluded)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != CARD)


def _weights_path(weights: Any) -> Path | None:
    path = getattr(weights, "path", weights)
    return Path(path) if path is not None else None


def _weights_line(weights: Any) -> str:
    """The teacher's weights file by name, and its SHA-256 as the file is now."""
    path = _weights_path(weights)
    if path is None:
        return "none given (the model's own initialisation or packaged weights)"
    line = f"{_code(path.name)} (SHA-256 at training time: {NOT_RECORDED}"
    if path.is_file():
        line += f"; the file at {_code(str(path))} now has SHA-256 {_code(sha256_file(path))}"
    else:
        line += f"; {_code(str(path))} is not on this machine now"
    return line + ")"


def _teacher_section(run: Run) -> str:
    recipe = run.config
    teacher, store = recipe.teacher, recipe.store
    lines: list[tuple[str, Any]] = []
    if teacher is None:
        lines.append(("teacher", "no teacher in the recipe"))
    elif teacher.ema_of:
        rule = "with warm-up" if teacher.warmup else "no warm-up"
        lines.append(("teacher", f"a momentum teacher: the moving average of the {teacher.ema_of}"))
        lines.append(("decay", f"{teacher.decay} ({rule})"))
    elif teacher.members:
        lines.append(("teacher", f"an ensemble of {len(teacher.members)} models"))
        weights = teacher.member_weights or [1.0] * len(teacher.members)
        for i, (member, w) in enumerate(zip(teacher.members, weights, strict=False)):
            lines.append((f"member {i} (weight {w})", _code(member.model)))
            lines.append((f"member {i} params", _code(member.params)))
            lines.append((f"member {i} weights", _weights_line(member.weights)))
    else:
        lines.append(("model", _code(teacher.model)))
        lines.append(("params", _code(teacher.params)))
        lines.append(("weights", _weights_line(teacher.weights)))
        lines.append(("outputs used", _code(teacher.outputs)))
    if store is not None:
        lines.append(("knowledge store", f"{_code(str(store.path))} (teacher outputs on disk)"))
    return "## Teacher\n\n" + _rows(lines)


def _student_section(run: Run, folder: Path, pre: dict[str, Any], half: bool, fmt: str) -> str:
    meta = run.student_meta()
    weights = "int8" if pre.get("int8") else "float16" if half else "float32"
    lines = [
        ("model", _code(meta.get("model") or meta.get("class") or NOT_RECORDED)),
        ("params", _code(meta.get("params", {}))),
        ("parameters", f"{meta['parameters']:,}" if meta.get("parameters") else NOT_RECORDED),
        ("format", f"{_code(fmt)} ({_code(pre.get('file', ''))})"),
        ("weights", md(weights)),
        ("size on disk", _size(_folder_bytes(folder))),
        ("exported with", md(pre.get("exporter", NOT_RECORDED))),
    ]
    if pre.get("quantization"):
        lines.append(("quantization", md(pre["quantization"], 600)))
    return "## Student\n\n" + _rows(lines)


def _inputs_section(pre: dict[str, Any]) -> str:
    inp = pre.get("input") or {}
    lines = [(md(k), _code(v)) for k, v in inp.items() if v is not None]
    steps = pre.get("pipeline") or []
    where = "inside the exported model" if pre.get("pipeline_in_graph") else "yourself, before it"
    lines.append(
        ("pipeline", ", ".join(_code(s) for s in steps) + f" (runs {where})" if steps else "none")
    )
    lines.append(("outputs", ", ".join(_code(o) for o in pre.get("outputs", [])) or NOT_RECORDED))
    if pre.get("num_classes"):
        names = pre.get("class_names") or []
        lines.append(("classes", f"{pre['num_classes']}: {md(names)}"))
    return "## Inputs and preprocessing\n\n" + _rows(lines) + "\n\n(From `preprocessing.json`.)"


def _data_section(run: Run, eval_examples: int | None) -> str:
    data = run.config.data
    lines = [
        ("source", _code(data.source)),
        ("params", _code(data.params)),
        (
            "training split",
            f"{_code(data.train_split)}; size {NOT_RECORDED}"
            + (
                ""
                if not data.limit_train
                else f" (at most its first {data.limit_train:,} examples used)"
                if data.limit_mode == "first"
                else f" (at most {data.limit_train:,} examples used, drawn at random with seed "
                f"{run.config.seed}, stratified by class where the targets are class labels)"
            ),
        ),
        (
            "evaluation split",
            f"{_code(data.eval_split)}; "
            + (f"{eval_examples:,} examples" if eval_examples is not None else NOT_RECORDED),
        ),
        ("augmentation", _code(data.augment.model_dump()) if data.augment else "none"),
    ]
    return "## Data\n\n" + _rows(lines)


def _adapter(adapter: Any) -> str:
    if adapter is None:
        return "none"
    return md(adapter if isinstance(adapter, str) else adapter.model_dump())


def _losses_section(run: Run) -> str:
    head = "| loss | weight | params | adapter |\n|---|---|---|---|"
    body = [
        f"| {md(loss.label or loss.name)} | {_number(loss.weight)} | {md(loss.params)} | "
        f"{_adapter(loss.adapter)} |"
        for loss in run.config.losses
    ]
    return "## Losses\n\nThe training objective is the weighted sum:\n\n" + "\n".join([head, *body])


def _training_section(run: Run, metrics: dict[str, Any]) -> str:
    recipe = run.config
    train = recipe.train
    opt = train.optimizer
    hyper = {"lr": opt.lr, "weight_decay": opt.weight_decay}
    hyper.update({"momentum": opt.momentum} if opt.name == "sgd" else {"betas": list(opt.betas)})
    lines = [
        ("epochs", f"{train.epochs} in the recipe; {metrics.get('epoch', NOT_RECORDED)} trained"),
        ("optimizer", f"{_code(opt.name)} {_code(hyper)}"),
        ("schedule", _code(train.schedule.model_dump())),
        ("batch size", str(recipe.data.batch_size)),
        ("seed", str(recipe.seed)),
        ("gradient clipping", str(train.grad_clip) if train.grad_clip else "none"),
    ]
    return "## Training\n\n" + _rows(lines)


def _evaluation_section(run: Run, metrics: dict[str, Any]) -> str:
    data = run.config.data
    split = metrics.get("split", data.eval_split)
    named = (
        f"the evaluation split named in the recipe, `data.eval_split: {md(split)}`"
        if split == data.eval_split
        else f"the validation split `{md(split)}` (the recipe's test split was not read)"
    )
    head = (
        f"## Evaluation\n\nOn {named} (the student in crossdistill at the end of training; "
        "`eval.json`):\n\n"
    )
    scalars = {
        k: v
        for k, v in metrics.items()
        if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if not scalars:
        return head + f"Metrics: {NOT_RECORDED} (the run has no eval.json)."
    table = ["| metric | value |", "|---|---|"]
    table += [f"| {md(k)} | {_number(v)} |" for k, v in scalars.items()]
    nested = sorted(k for k, v in metrics.items() if isinstance(v, (dict, list)))
    tail = f"\n\nAlso in `eval.json`: {', '.join(_code(k) for k in nested)}." if nested else ""
    return head + "\n".join(table) + tail


def _parity_section(parity: dict[str, Any]) -> str:
    lines = [
        (
            "examples",
            f"{parity.get('examples', NOT_RECORDED)} of split "
            f"{_code(parity.get('split', NOT_RECORDED))}",
        ),
        ("reference", md(parity.get("reference", NOT_RECORDED))),
        ("max abs diff (all outputs)", _number(parity.get("max_abs_diff_all", NOT_RECORDED))),
    ]
    for name, diff in (parity.get("max_abs_diff") or {}).items():
        lines.append((f"max abs diff of {md(name)}", _number(diff)))
    for key in ("top1_agreement", "disagreements", "mean_cosine", "min_cosine"):
        if key in parity:
            lines.append((key.replace("_", " "), _number(parity[key])))
    return (
        "## Parity\n\nThe exported file, run by its own runtime, against the trained student "
        "(`parity.json`):\n\n" + _rows(lines)
    )


def _usage_section(exporter: Exporter, pre: dict[str, Any]) -> str:
    return (
        "## How to load it without crossdistill\n\nRun from this folder (or put the folder's "
        "path in front of the file names).\n\n" + fence(exporter.usage(pre), "python")
    )


def _recipe_section(run: Run) -> str:
    try:
        text = run.config_file.read_text(errors="replace")
    except OSError:
        text = f"# config.yaml: {NOT_RECORDED}"
    if len(text) > RECIPE_CLIP:
        text = text[:RECIPE_CLIP] + "\n# ... clipped"
    return (
        "## Recipe\n\n<details><summary>config.yaml (the resolved recipe this student was "
        "trained by)</summary>\n\n" + fence(text, "yaml") + "\n\n</details>"
    )


# ----------------------------------------------------------------------------- the card


def card_data(run: Run, eval_examples: int | None) -> dict[str, Any]:
    """Facts for a format's own card mechanism: a model name, the data sets (name, split, size,
    the losses' names) and tags."""
    recipe = run.config
    losses = " + ".join(f"{loss.weight:g} × {loss.label or loss.name}" for loss in recipe.losses)
    return {
        "model_name": f"{recipe.name}: a student distilled with crossdistill",
        "train": {"name": f"{recipe.data.source} ({recipe.data.train_split})", "losses": losses},
        "eval": {
            "name": f"{recipe.data.source} ({recipe.data.eval_split})",
            "size": eval_examples,
            "losses": losses,
        },
        "tags": ["crossdistill", "knowledge-distillation"],
    }


def model_card(
    run: Run,
    folder: Path,
    exporter: Exporter,
    pre: dict[str, Any],
    parity: dict[str, Any],
    eval_examples: int | None = None,
    title: bool = True,
) -> str:
    """The card's Markdown for the export in ``folder`` (its model files already written).

    ``title``: start with a title and summary (False when appending to a format's own card)."""
    recipe = run.config
    fmt = plugin_name(exporter)
    metrics = run.final_metrics()
    teacher = recipe.teacher
    taught_by = (
        "no teacher model (from a knowledge store or the targets alone)"
        if teacher is None
        else "a moving average of itself (a momentum teacher)"
        if teacher.ema_of
        else f"the teacher {_code(teacher.model or 'ensemble')}"
    )
    intro = (
        f"# {md(recipe.name)}\n\nA student model ({_code(run.student_meta().get('model'))}) "
        f"distilled by [crossdistill](https://pypi.org/project/crossdistill/) from {taught_by} "
        f"on the data source {_code(recipe.data.source)}, exported as {_code(fmt)}. It runs "
        "without crossdistill: see *How to load it* below."
    )
    sections = [
        intro if title else "# Distillation (crossdistill)",
        _student_section(run, folder, pre, bool(parity.get("half")), fmt),
        _inputs_section(pre),
        _teacher_section(run),
        _data_section(run, eval_examples),
        _losses_section(run),
        _training_section(run, metrics),
        _evaluation_section(run, metrics),
        _parity_section(parity),
        "## Intended use and limitations\n\n"
        + LIMITATIONS.format(split=recipe.data.eval_split, source=recipe.data.source),
        _usage_section(exporter, pre),
        _recipe_section(run),
    ]
    return "\n\n".join(sections) + "\n"


def write_card(
    run: Run,
    folder: Path,
    exporter: Exporter,
    pre: dict[str, Any],
    parity: dict[str, Any],
    eval_examples: int | None = None,
) -> Path:
    """Write ``README.md`` into ``folder``; appended to a card the format wrote itself."""
    path = folder / CARD
    own = path.read_text(encoding="utf-8") if path.is_file() else ""
    text = model_card(run, folder, exporter, pre, parity, eval_examples, title=not own)
    path.write_text(own.rstrip() + "\n\n" + text if own else text, encoding="utf-8")
    return path
