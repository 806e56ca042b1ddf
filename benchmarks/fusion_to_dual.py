"""Cross-encoder -> dual encoder: what distillation buys a bi-encoder, and at what latency.

    python benchmarks/fusion_to_dual.py          # full: teacher, mining, 3 seeds per student
    python benchmarks/fusion_to_dual.py --quick  # minutes: small teacher and data, 1 seed

Writes benchmarks/results/fusion_to_dual[.quick].json and .md: one row per system with
``mrr_at_10``, ``ndcg_at_10``, ``r_at_1``, ``r_at_10``, ``ms_per_query``, ``index_build_s`` and
``params``, on held-out WordNet queries (``wordnet_retrieval_set``: 500 example sentences of
held-out synsets against 10,000 dictionary entries; --quick 100 against 2,000).

The pipeline, every step a crossdistill recipe or command (reused when already done):

1. **teacher**: recipes/fusion_to_dual/cross_encoder.yaml fine-tunes all-MiniLM-L6-v2's weights
   as a cross-encoder on 8,000 training queries (``crossdistill run``).
2. **mining**: the teacher scores 5,000 *other* training queries' pools (positive + 7
   negatives: 5 related synsets, 2 random) and keeps the 3 hardest (``crossdistill mine``).
3. **store**: the teacher's scores of those (query, positive, 3 negatives) lists, once
   (``crossdistill cache``); every student below reads them.
4. **students** (``crossdistill run``, seeds 0-2, last epoch): the MiniLM bi-encoder with
   Margin-MSE (recipes/fusion_to_dual/margin_mse.yaml), and a static-embedding dual encoder
   (recipes/fusion_to_dual/static.yaml) with each of Margin-MSE, listwise KL and the
   teacher-weighted in-batch contrastive loss.

Systems: the bi-encoder all-MiniLM-L6-v2 as it ships (undistilled), the cross-encoder
re-ranking that bi-encoder's top 100, and the distilled students (mean ± std over seeds).
Quality is computed in batches with all cores; ``ms_per_query`` is one query at a time with
``--threads`` threads (default 1), the mean over 50 queries (20 for re-ranking), from the query
string to its ranked list: encode + cosine against the index + top 100 for a dual encoder,
plus the cross-encoder's one batch of 100 pairs for re-ranking. ``index_build_s`` embeds the
corpus (all cores). ``params``: the re-ranking system counts both of its models.

Targets: the distilled MiniLM dual encoder closes at least half of the MRR@10 gap between the
undistilled bi-encoder and the re-ranker, at ≥ 50x lower ``ms_per_query`` than the re-ranker.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _common import Trial

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RECIPES = ROOT / "recipes" / "fusion_to_dual"
# name -> (recipe, overrides): the students
STUDENTS: dict[str, tuple[str, list[str]]] = {
    "minilm_margin_mse": ("margin_mse.yaml", []),
    "static_margin_mse": ("static.yaml", []),
    "static_listwise_kl": (
        "static.yaml",
        ["losses.0.name=listwise_kl", "losses.0.params={student: scores, teacher: scores}"],
    ),
    "static_inbatch_weighted": (
        "static.yaml",
        ["losses.0.name=inbatch_weighted", "losses.0.params={}"],
    ),
}
HEADLINE = "minilm_margin_mse"
GAP_FRACTION = 0.5
SPEEDUP = 50.0
FULL = {"teacher_queries": 8000, "mine_queries": 5000, "queries": 500, "corpus": 10_000}
QUICK = {"teacher_queries": 256, "mine_queries": 256, "queries": 100, "corpus": 2000}
POOL = {"negatives": 7, "related": 5}
KEEP = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minutes instead of an hour")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for latency")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument(
        "--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS), metavar="NAME"
    )
    return parser.parse_args()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def teacher_run(sizes: dict[str, int], quick: bool, out: Path) -> Path:
    from crossdistill.config import load_recipe
    from crossdistill.pipeline import run_or_reuse

    overrides = [f"data.params.max_queries={sizes['teacher_queries']}", "train.progress=false"]
    if quick:
        overrides += [f"output.dir={out}", "data.limit_eval=64"]
    return run_or_reuse(load_recipe(RECIPES / "cross_encoder.yaml", overrides))


def mine(teacher: Path, sizes: dict[str, int], out: Path) -> dict[str, Any]:
    """The triples file (mined once per teacher: its name carries the teacher's hash)."""
    from crossdistill.domains.ranking.mine import mine_to_file
    from crossdistill.runs import Run

    path = out / f"triples-{sha(Run(teacher).student_file)}.jsonl"
    summary_path = path.with_suffix(".summary.json")
    if summary_path.is_file() and path.is_file():
        return json.loads(summary_path.read_text())
    params = {**POOL, "skip": sizes["teacher_queries"], "max_queries": sizes["mine_queries"]}
    start = time.perf_counter()
    summary = mine_to_file(teacher, path, "wordnet_ranking", params, KEEP, progress=False)
    summary |= {"params": params, "seconds": round(time.perf_counter() - start, 1)}
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def rerank_scores(
    teacher: Path, rset: Any, first: Any, out: Path, threads: int
) -> tuple[Any, dict[str, Any]]:
    """The cross-encoder's re-ranking of the bi-encoder's top 100, its scores cached on disk
    (NumPy) under a name carrying the teacher's hash and the retrieval set."""
    import numpy as np

    from crossdistill.domains.ranking.retrieval import cross_scorer, rerank
    from crossdistill.runs import Run, load_student

    key = hashlib.sha256(f"{sha(Run(teacher).student_file)} {rset.name}".encode())
    cache = out / f"rerank-{key.hexdigest()[:16]}.npy"
    cached = np.load(cache) if cache.is_file() else None
    cross = load_student(teacher)
    start = time.perf_counter()
    search, scores = rerank(
        cross_scorer(cross),
        rset,
        first,
        latency_queries=20,
        cached=cached,
        progress=False,
        latency_threads=threads,
    )
    if cached is None:
        np.save(cache, scores)
    params = sum(p.numel() for p in cross.parameters())
    return search, {"params": params, "seconds": round(time.perf_counter() - start, 1)}


def row(name: str, searches: list[Any], params: int | None) -> dict[str, Any]:
    """A system's row: metrics and timings, mean (and std) over its seeds."""
    from _common import std

    keys = ["mrr_at_10", "ndcg_at_10", "r_at_1", "r_at_10", "r_at_100"]
    out: dict[str, Any] = {"name": name}
    for key in keys:
        values = [s.metrics[key] for s in searches]
        out[key] = round(sum(values) / len(values), 4)
        if len(values) > 1:
            out[f"{key}_std"] = round(std(values), 4)
    for key in ("ms_per_query", "index_build_s", "rerank_ms_per_query"):
        values = [s.timings[key] for s in searches if key in s.timings]
        if values:
            out[key] = round(sum(values) / len(values), 3)
    out["params"] = params
    if len(searches) > 1:
        out["mrr_at_10_per_seed"] = [round(s.metrics["mrr_at_10"], 4) for s in searches]
    return out


def check_targets(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    base, rerank = rows["bi-encoder"], rows["cross-encoder re-ranking"]
    if HEADLINE not in rows:
        return {}
    student = rows[HEADLINE]
    gap = rerank["mrr_at_10"] - base["mrr_at_10"]
    closed = (student["mrr_at_10"] - base["mrr_at_10"]) / gap if gap > 0 else float("nan")
    speedup = rerank["ms_per_query"] / student["ms_per_query"]
    return {
        "student": HEADLINE,
        "mrr_gap": round(gap, 4),
        "gap_closed": round(closed, 4),
        "gap_closed_ge_half": closed >= GAP_FRACTION,
        "speedup_vs_rerank": round(speedup, 1),
        "speedup_ge_50": speedup >= SPEEDUP,
        "teacher_beats_bi_encoder": gap > 0,
    }


def render(result: dict[str, Any]) -> tuple[str, str]:
    from _common import format_mean_std, markdown_table

    headers = ["system", "MRR@10", "nDCG@10", "R@1", "R@10", "ms/query", "index s", "params"]
    body = []
    for r in result["rows"]:
        body.append(
            [
                r["name"],
                *(
                    format_mean_std(r[key], r.get(f"{key}_std"), 3)
                    for key in ("mrr_at_10", "ndcg_at_10", "r_at_1", "r_at_10")
                ),
                f"{r['ms_per_query']:.1f}",
                f"{r.get('index_build_s', 0):.1f}",
                f"{r['params'] / 1e6:.1f}M",
            ]
        )
    t = result["targets"]
    notes = []
    if t:
        notes.append(
            f"{t['student']} closes {t['gap_closed']:.0%} of the MRR@10 gap of {t['mrr_gap']:.3f} "
            f"between the bi-encoder and the re-ranker (≥ 50%: {_mark(t['gap_closed_ge_half'])}) "
            f"at {t['speedup_vs_rerank']:.0f}x lower latency (≥ 50x: {_mark(t['speedup_ge_50'])})."
        )
    notes.append(
        f"{result['retrieval_set']}; students: seeds {result['seeds']}, mean ± std, last epoch; "
        f"latency at {result['threads']} thread(s)."
    )
    return markdown_table(headers, body), " ".join(notes)


def _mark(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def main() -> None:
    args = parse_args()
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    sys.path.insert(0, str(HERE))
    os.chdir(ROOT)

    from _common import Variant, provenance, run_variants, write_results
    from crossdistill.domains.ranking.retrieval import dense_search, parameter_count
    from crossdistill.domains.ranking.wordnet_ranking import wordnet_retrieval_set
    from crossdistill.domains.text.suite.encoders import load_encoder
    from crossdistill.pipeline import cache_recipe
    from crossdistill.runs import Run

    began = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    out = Path("runs/bench-quick/fusion_to_dual" if args.quick else "runs/bench/fusion_to_dual")
    out = (ROOT / out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, Any] = {}

    start = time.perf_counter()
    teacher = teacher_run(sizes, args.quick, out)
    timings["teacher_ready_s"] = round(time.perf_counter() - start, 1)
    mined = mine(teacher, sizes, out)
    triples = Path(mined["triples"])
    rset = wordnet_retrieval_set(sizes["queries"], sizes["corpus"])

    def search(spec: str | Path) -> tuple[Any, int | None]:
        encoder = load_encoder(str(spec))
        found = dense_search(encoder, rset, latency_queries=50, latency_threads=args.threads)
        return found, parameter_count(encoder)

    base, base_params = search("minilm")
    rows = [row("bi-encoder", [base], base_params)]
    reranked, info = rerank_scores(teacher, rset, base, out, args.threads)
    rows.append(row("cross-encoder re-ranking", [reranked], (base_params or 0) + info["params"]))
    timings["rerank_s"] = info["seconds"]

    def read(trial: Trial) -> dict[str, Any]:
        name, seed = trial.label, trial.seed
        print(f"{name} seed {seed}: ready in {trial.seconds:.0f} s", flush=True)
        found, params = search(trial.run.path)
        print(f"{name} seed {seed}: MRR@10 {found.metrics['mrr_at_10']:.4f}", flush=True)
        return {"search": found, "params": params, "run": str(trial.run.path)}

    common = [
        f"output.dir={out / 'runs'}",
        f"data.params.path={triples}",
        f"teacher.weights={Run(teacher).student_file}",
        f"store.path={out / 'stores' / triples.stem}",
        "train.progress=false",
    ]
    students = run_variants(
        [Variant(name, RECIPES / STUDENTS[name][0], STUDENTS[name][1]) for name in args.students],
        seeds,
        read,
        common=common,
        outer="variant",
        prepare=lambda recipe: cache_recipe(recipe, progress=False),  # the first writes the store
    )
    rows += [row(name, s["search"], s["params"][-1]) for name, s in students.items()]
    by_name = {r["name"]: r for r in rows}
    result: dict[str, Any] = {
        "rows": rows,
        "targets": check_targets(by_name),
        "seeds": seeds,
        "quick": args.quick,
        "threads": args.threads,
        "retrieval_set": rset.name,
        "mining": mined,
        "teacher_run": str(teacher),
        "runs": {name: s["run"] for name, s in students.items()},
        "recipes": {n: f"recipes/fusion_to_dual/{STUDENTS[n][0]}" for n in args.students},
        "overrides": {n: STUDENTS[n][1] for n in args.students},
        "timings": timings,
        **provenance(began),
    }
    table, notes = render(result)
    print(write_results("fusion_to_dual" + (".quick" if args.quick else ""), result, table, notes))


if __name__ == "__main__":
    main()
