"""The docs site's generated pages, made from the code at every build so they cannot drift.

``mkdocs.yml`` loads this file as a hook: :func:`on_files` adds the generated pages to the
site (nothing is written into ``docs/``). Each page is also a function that a test calls:

- :func:`recipe_reference`: every recipe key, from the pydantic models of ``crossdistill.config``
  (type, default, constraints, and the description: ``Field(description=...)``, else the
  comment beside or above the field in the source, else a line of :data:`NOTES`);
- :func:`registry_reference`: every registered plug-in of every kind (what ``crossdistill list
  KIND -v`` prints: parameters with types and defaults, and the docstring's first paragraph);
- :func:`api_reference`: mkdocstrings blocks for every name of ``crossdistill.__all__``;
- :func:`benchmarks_page`: ``benchmarks/results/*.md`` of full runs (``*.quick.md`` left out);
- :func:`example_pages`: ``examples/*/README.md``.

``python scripts/gen_docs.py OUT`` writes the pages to the folder OUT, to read them without mkdocs.
"""

from __future__ import annotations

import ast
import enum
import functools
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
import pydantic
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parent.parent

# Descriptions of the recipe keys whose source has neither Field(description=...) nor a comment.
# "Model.field" -> text. A key here that no longer exists fails the build (see recipe_reference).
NOTES = {
    "PluginSpec.name": "a registered name (`crossdistill list KIND`) or `package.module:Attribute`",
    "PluginSpec.params": "keyword arguments of the plug-in, checked against its signature",
    "TapSpec.name": "the Knowledge key is `features/<name>` (or `attention/<name>`)",
    "TapSpec.path": "the module path in the model, e.g. `layer3.1` or `encoder.layer.5`",
    "TapSpec.on": "capture the module's output or its input",
    "TapSpec.select": "an item of a tuple (index) or dict (key) output",
    "TapSpec.kind": "`attention` for attention probabilities",
    "WeightsSpec.path": "a `.safetensors` file or a `.pt`/`.pth` state dict",
    "ModelSpec.model": "a registered model (`crossdistill list models`) or "
    "`package.module:Callable`",
    "ModelSpec.params": "keyword arguments of the model's factory",
    "ModelSpec.weights": "a weights file, or how to map its keys (WeightsSpec)",
    "ModelSpec.outputs": "the Knowledge keys of the model's outputs, in order (a list), or "
    "output key -> Knowledge key (a dict)",
    "ModelSpec.taps": "forward hooks that add `features/<name>` to its Knowledge",
    "ModelSpec.pipeline": "this side's own input pipeline steps (`crossdistill list pipeline`)",
    "TeacherSpec.model": "one teacher: as `student.model`",
    "TeacherSpec.params": "as `student.params`",
    "TeacherSpec.weights": "as `student.weights`",
    "TeacherSpec.outputs": "as `student.outputs`",
    "TeacherSpec.taps": "as `student.taps`",
    "TeacherSpec.pipeline": "the teacher's own input pipeline",
    "TeacherSpec.members": "an ensemble: one model spec per member",
    "TeacherSpec.member_weights": "the members' weights in the ensemble (default: equal)",
    "LossSpec.weight": "the term's weight in the total loss",
    "LossSpec.adapter": "maps the student tensor to the teacher's shape first: `auto`, an "
    "adapter (`crossdistill list adapters`), or {name, params}",
    "ViewSpec.field": "the tensor field to read",
    "ViewSpec.channels": "the channels (first axis after the batch) this side reads",
    "DataSpec.source": "a registered data source (`crossdistill list data`) or "
    "`package.module:Callable` returning a Split",
    "DataSpec.params": "keyword arguments of the data source",
    "DataSpec.train_split": "the split to train on",
    "DataSpec.eval_split": "the split to evaluate on",
    "DataSpec.augment": "a seeded, recorded augmentation (`crossdistill list augmentations`)",
    "DataSpec.batch_size": "training batch size",
    "DataSpec.eval_batch_size": "evaluation batch size",
    "DataSpec.num_workers": "DataLoader worker processes",
    "DataSpec.limit_eval": "use only the first N evaluation examples",
    "StoreKeySpec.format": "`dense`, or `topk` (the k largest logits per example)",
    "StoreKeySpec.k": "how many logits `topk` keeps",
    "StoreSpec.path": "the store's folder (training split)",
    "StoreSpec.eval_path": "a store of the teacher on the evaluation split",
    "StoreSpec.dtype": "the stored precision",
    "StoreSpec.keys": "Knowledge key -> how it is stored",
    "StoreSpec.shard_size": "examples per shard",
    "OptimizerSpec.name": "the optimizer",
    "OptimizerSpec.lr": "learning rate (peak, after warm-up)",
    "OptimizerSpec.momentum": "SGD momentum",
    "OptimizerSpec.nesterov": "Nesterov momentum (SGD)",
    "OptimizerSpec.weight_decay": "weight decay",
    "OptimizerSpec.betas": "AdamW's betas",
    "ScheduleSpec.name": "the learning-rate schedule",
    "ScheduleSpec.warmup_epochs": "linear warm-up, in epochs (fractions allowed)",
    "ScheduleSpec.gamma": "the factor at each milestone (`step`)",
    "ScheduleSpec.min_lr_ratio": "the last learning rate as a fraction of `lr` (`cosine`)",
    "TrainSpec.epochs": "epochs to train",
    "TrainSpec.optimizer": "see [optimizer](#train-optimizer)",
    "TrainSpec.schedule": "see [schedule](#train-schedule)",
    "TrainSpec.grad_clip": "clip the gradient norm to this value",
    "TrainSpec.deterministic": "deterministic kernels: bit-for-bit reproducible on CPU",
    "TrainSpec.log_every": "write the loss terms to metrics.jsonl every N steps",
    "TrainSpec.keep_checkpoints": "how many epoch checkpoints to keep",
    "TrainSpec.progress": "show a progress bar",
    "EvalSpec.topk": "k of top-k accuracy and agreement",
    "OutputSpec.dir": "the folder that holds run folders (`<dir>/<name>/`)",
    "Recipe.name": "the run's name: its folder is `output.dir/name`",
    "Recipe.seed": "seeds data order, augmentation, initialisation and dropout",
    "Recipe.data": "the data",
    "Recipe.teacher": "the teacher; without it, a store without `teacher:` or a "
    "teacher-free loss (`ce`)",
    "Recipe.student": "the student",
    "Recipe.losses": "the weighted losses (at least one with a weight above 0)",
    "Recipe.train": "training",
    "Recipe.eval": "evaluation while training",
    "Recipe.output": "where runs go",
    "Recipe.store": "a knowledge store of the teacher's outputs",
}


# ------------------------------------------------------------------------ recipe reference


@functools.cache
def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment lines just above it and the comment beside it, in ``cls``'s
    own source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, whole line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            whole = tok.line.strip().startswith("#")
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), whole)
    out: dict[str, str] = {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in comments and comments[line][1]:
            above.insert(0, comments[line][0])
            line -= 1
        beside = [
            comments[n][0]
            for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
            if n in comments and not comments[n][1]
        ]
        text = " ".join(above + beside)
        if text:
            out[node.target.id] = text
    return out


def _constraints(metadata: list[Any]) -> list[str]:
    names = {
        annotated_types.Gt: ("> ", "gt"),
        annotated_types.Ge: ("≥ ", "ge"),
        annotated_types.Lt: ("< ", "lt"),
        annotated_types.Le: ("≤ ", "le"),
        annotated_types.MinLen: ("at least ", "min_length"),
        annotated_types.MaxLen: ("at most ", "max_length"),
    }
    out = []
    for item in metadata:
        for kind, (prefix, attr) in names.items():
            if isinstance(item, kind):
                suffix = " item(s)" if attr.endswith("length") else ""
                out.append(f"{prefix}{getattr(item, attr)}{suffix}")
    return out


def _annotated_constraints(annotation: Any) -> list[str]:
    """Constraints inside an annotation (``Size | None`` holds ``Annotated[int, gt=0, ...]``)."""
    out: list[str] = []
    if typing.get_origin(annotation) is typing.Annotated:
        args = typing.get_args(annotation)
        for meta in args[1:]:
            out += _constraints(meta.metadata if isinstance(meta, FieldInfo) else [meta])
        return out + _annotated_constraints(args[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            out += _annotated_constraints(arg)
    return out


def _type(annotation: Any, models: dict[type, str]) -> str:
    """A type as a recipe writer reads it; a nested model links to its section."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None) or annotation is None:
        return "null"
    if origin is typing.Annotated:
        return _type(args[0], models)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a, models) for a in args)
    if origin is typing.Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in args)
    if origin in (list, tuple, dict):
        inner = ", ".join(_type(a, models) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        anchor = models.get(annotation)
        name = annotation.__name__
        return f"[{name}](#{anchor})" if anchor else name
    if annotation is Path:
        return "path"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(repr(m.value) for m in annotation)
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    if isinstance(value, pydantic.BaseModel):
        return "(its defaults)"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value!r}`" if value is not None else "`null`"


def _nested(annotation: Any) -> Iterator[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _nested(arg)


def recipe_sections() -> list[tuple[list[str], type[pydantic.BaseModel]]]:
    """(the recipe paths that hold it, model) for the recipe and every model under it,
    breadth first (the shortest path names a model's section); a list's items are ``key[]``."""
    from crossdistill.config import Recipe

    paths: dict[type[pydantic.BaseModel], list[str]] = {Recipe: [""]}
    queue: list[tuple[str, type[pydantic.BaseModel]]] = [("", Recipe)]
    while queue:
        path, model = queue.pop(0)
        for name, field in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            if typing.get_origin(field.annotation) is list:
                key += "[]"
            for sub in _nested(field.annotation):
                if sub in paths:
                    paths[sub].append(key)
                else:
                    paths[sub] = [key]
                    queue.append((key, sub))
    return [(p, m) for m, p in paths.items()]


def _anchor(path: str) -> str:
    return "recipe" if not path else path.replace("[]", "").replace(".", "-")


def recipe_reference() -> str:
    """Every key of a recipe: one table per section, in the order a recipe reads."""
    sections = recipe_sections()
    anchors = {model: _anchor(paths[0]) for paths, model in sections}
    documented = {f"{m.__name__}.{f}" for _, m in sections for f in m.model_fields}
    stale = sorted(set(NOTES) - documented)
    if stale:
        raise RuntimeError(f"scripts/gen_docs.py NOTES describe keys that no longer exist: {stale}")
    lines = [
        "# Recipe reference",
        "",
        "Generated from the pydantic models in `crossdistill/config.py` at every docs build.",
        "A recipe is YAML; `--set a.b=c` overrides any key (`--set losses.1.weight=0.9`), and",
        "every error names its key's path. Unknown keys are refused with the closest known ones.",
        "",
    ]
    for paths, model in sections:
        title = f"`{paths[0]}`" if paths[0] else "The recipe (top level)"
        lines += [f"## {title} {{#{anchors[model]}}}", ""]
        doc = inspect.cleandoc(model.__doc__ or "")
        if doc and model.__doc__ is not pydantic.BaseModel.__doc__:
            lines += [_prose(doc.replace("``", "`")), ""]
        also = ", ".join(f"`{p}`" for p in paths[1:])
        lines += [
            f"Model: `crossdistill.config.{model.__name__}`."
            + (f" The same keys at {also}." if also else ""),
            "",
            "| key | type | default | constraints | description |",
            "|---|---|---|---|---|",
        ]
        comments = _field_comments(model)
        for base in model.__mro__[1:]:  # inherited fields keep their base's comments
            if base.__module__ == model.__module__:  # not pydantic's own classes
                comments = {**_field_comments(base), **comments}
        for name, field in model.model_fields.items():
            constraints = _constraints(field.metadata) + _annotated_constraints(field.annotation)
            text = (
                field.description
                or comments.get(name)
                or NOTES.get(f"{model.__name__}.{name}")
                or next(
                    (
                        NOTES[f"{b.__name__}.{name}"]
                        for b in model.__mro__
                        if f"{getattr(b, '__name__', '')}.{name}" in NOTES
                    ),
                    "",
                )
            )
            cells = [
                f"`{name}`",
                _type(field.annotation, anchors),
                _default(field),
                ", ".join(dict.fromkeys(constraints)),
                _cell(text),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _prose(text: str) -> str:
    """Markdown-safe prose: a trailing `{...}` would read as attributes (attr_list), a `<` as
    HTML; code spans are left as they are."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(
        p.replace("{", "\\{").replace("}", "\\}").replace("<", "&lt;") if i % 2 == 0 else p
        for i, p in enumerate(parts)
    )


def _cell(text: str) -> str:
    """Prose for a table cell, where a `|` would end the cell."""
    return _prose(text).replace("|", "\\|")


# ------------------------------------------------------------------------ registries


def _registry_kinds() -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    # the command line's list of kinds is the one list of registries (crossdistill list KIND)
    from crossdistill.cli.list import KINDS, SUPPLIED

    return KINDS, SUPPLIED


def registry_reference() -> str:
    """Every registered plug-in of every kind, with its parameters and summary."""
    from crossdistill.registry import import_object

    kinds, supplied = _registry_kinds()
    lines = [
        "# Registered plug-ins",
        "",
        "Generated at every docs build from the registries, plug-in packages included (what",
        "`crossdistill list KIND -v` prints). A recipe names each by its registered name, and",
        "gives its parameters under `params:`. Parameters crossdistill supplies itself (an",
        "adapter's shapes, a data source's split) are left out.",
        "",
    ]
    for kind, ref in kinds.items():
        registry = import_object(ref, "docs")
        names = registry.names()
        lines += [
            f"## {kind}",
            "",
            f"`crossdistill list {kind}` · registry `{ref}` · {len(names)} registered",
            "",
        ]
        for name in names:
            info = registry.describe(name, exclude=supplied.get(kind, ()))
            obj = registry.get(name)
            lines += [f"### `{name}` {{#{kind}-{_slug(name)}}}", "", f"`{info['path']}`", ""]
            if info["summary"]:
                lines += [_md_escape(info["summary"].replace("``", "`")), ""]
            if info.get("paper") and info["paper"] not in info["summary"]:
                lines += [f"Paper: {_md_escape(info['paper'])}.", ""]
            needs = _needs(registry, name, obj)
            if needs:
                lines += [needs, ""]
            options = getattr(obj, "Options", None)
            if isinstance(options, type) and issubclass(options, pydantic.BaseModel):
                lines += _suite_options(options)
            if info["params"]:
                lines += ["| parameter | type | default |", "|---|---|---|"]
                for p in info["params"]:
                    default = (
                        "**required**" if p["default"] == "required" else f"`{p['default']!r}`"
                    )
                    # not a code span: a table cell's `\|` stays a backslash inside one
                    kind_type = _md_escape(str(p["type"]))
                    lines.append(f"| `{p['name']}` | {kind_type} | {default} |")
                lines.append("")
            elif not isinstance(options, type):
                lines += ["No parameters.", ""]
    return "\n".join(lines)


def _needs(registry: Any, name: str, obj: Any) -> str:
    """A loss's needs, of an instance with default parameters (needs may follow a parameter,
    such as a Knowledge key); a loss with required parameters: what its class declares."""
    if not callable(getattr(obj, "needs", None)):
        return ""
    try:
        needs = registry.build(name).needs()
        student, teacher, target = needs.student, needs.teacher, needs.target
    except Exception:  # required parameters: the keys are what they name
        student = getattr(obj, "needs_student", ())
        teacher = getattr(obj, "needs_teacher", ())
        target = getattr(obj, "needs_target", False)
        if not (student or teacher):
            return "Needs: the Knowledge keys its parameters name" + (
                ", and the target." if target else "."
            )
    parts = [
        f"{side} {', '.join(f'`{k}`' for k in keys)}"
        for side, keys in (("student", student), ("teacher", teacher))
        if keys
    ]
    if target:
        parts.append("the target")
    return f"Needs: {'; '.join(parts)}." if parts else ""


def _suite_options(options: type[pydantic.BaseModel]) -> list[str]:
    """A suite's options, each a `--flag` of `crossdistill eval --suite`."""
    if not options.model_fields:
        return ["No options.", ""]
    lines = ["| option | type | default |", "|---|---|---|"]
    for field_name, field in options.model_fields.items():
        flag = "--" + field_name.replace("_", "-")
        lines.append(f"| `{flag}` | {_type(field.annotation, {})} | {_default(field)} |")
    return [*lines, ""]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _md_escape(text: str) -> str:
    # square brackets in a summary (a shape, `[B, T]`) must not read as a link or reference
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(
        p if i % 2 else _cell(p).replace("[", "\\[").replace("]", "\\]").replace("*", "\\*")
        for i, p in enumerate(parts)
    )


# ------------------------------------------------------------------------ API, benchmarks


def api_reference() -> str:
    """mkdocstrings blocks for ``crossdistill.__all__``, each at the module that defines it."""
    import crossdistill

    lines = [
        "# Python API",
        "",
        "Everything below is importable from `crossdistill` (its `__all__`); each is documented",
        "where it is defined. Most users need `distill`, `cache`, `Run` and `load_student`;",
        "the rest is for assembling your own loop or plug-ins.",
        "",
    ]
    for name in sorted(crossdistill.__all__, key=str.lower):
        if name == "__version__":
            continue
        module = crossdistill._PUBLIC[name]
        # its heading, with the signature, is mkdocstrings' (show_root_heading in mkdocs.yml)
        lines += [f"::: {module}.{name}", "    options:", "      heading_level: 2", ""]
    return "\n".join(lines)


def benchmark_files() -> list[Path]:
    """The results of full benchmark runs: ``benchmarks/results/*.md`` but ``*.quick.md``."""
    results = ROOT / "benchmarks" / "results"
    return sorted(p for p in results.glob("*.md") if not p.name.endswith(".quick.md"))


def benchmarks_page() -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated from `benchmarks/results/*.md` (full runs only; `make bench-quick` writes",
        "`*.quick.md`, left out here). Each comes from `python benchmarks/<name>.py`, which",
        "also writes the numbers as JSON beside it; the machine and seeds are in each table.",
        "",
    ]
    for path in benchmark_files():
        body = path.read_text()
        # the file's own headings go one level down, under its name
        body = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", body, flags=re.M)
        body = re.sub(r"^## .*\n", "", body, count=1) if body.startswith("## ") else body
        lines += [f"## {path.stem}", "", f"`benchmarks/results/{path.name}`", "", body, ""]
    return "\n".join(lines)


def example_pages() -> dict[str, str]:
    """``examples/<name>.md`` -> that example's README, with where its code lives."""
    out = {}
    for readme in sorted((ROOT / "examples").glob("*/README.md")):
        name = readme.parent.name
        head = f'!!! note "Code"\n    The files of this example are in `examples/{name}/`.\n\n'
        out[f"examples/{name}.md"] = head + readme.read_text()
    return out


def pages() -> dict[str, str]:
    """Every generated page: its path in the site's sources -> its Markdown."""
    return {
        "reference/recipe.md": recipe_reference(),
        "reference/plugins.md": registry_reference(),
        "reference/api.md": api_reference(),
        "benchmarks.md": benchmarks_page(),
        **example_pages(),
    }


# ------------------------------------------------------------------------ mkdocs hook


def on_files(files: Any, config: Any) -> Any:
    """mkdocs hook: add the generated pages to the site (before the navigation is built)."""
    from mkdocs.structure.files import File

    if str(ROOT / "src") not in sys.path:  # the library as the repository holds it
        sys.path.insert(0, str(ROOT / "src"))
    for src_uri, content in pages().items():
        files.append(File.generated(config, src_uri, content=content))
    return files


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "site-src")
    for rel, text in pages().items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    print(f"wrote {len(pages())} pages under {out}")
