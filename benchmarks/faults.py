"""Fault injection: ``kill -9`` of training and of the store writer, resumed, compared bytewise.

    python benchmarks/faults.py           # 20 training kills + 20 store-writer kills
    python benchmarks/faults.py --quick   # 3 + 3

Writes benchmarks/results/faults[.quick].json and .md. Everything runs under
runs/bench[-quick]/faults/ (git-ignored); every child process is ``python -m crossdistill ...``
with ``OMP_NUM_THREADS=1`` on the CPU. Random choices come from ``random.Random(--seed)``.

1. **Training** (``kills``, ``resumed``, ``identical``, ``max_abs_diff``; target identical =
   kills). A digits teacher is trained once from recipes/digits/teacher.yaml (reused when it is
   there). The recipe is recipes/digits/kd.yaml with that teacher, ``crop_flip`` augmentation
   (padding 1), ``train.epochs: 4`` (23 steps per epoch, 92 in all), ``checkpoint_every_steps: 2``
   (a mid-epoch checkpoint every second step), ``keep_checkpoints: 3`` (the default: older
   checkpoints are pruned while training, so kills also land while one is being deleted),
   ``log_every: 1`` (a ``"kind": "step"`` record per step) and ``progress: false``. An
   uninterrupted run of it gives the reference ``student.safetensors``.
   For kill ``i`` a *fresh* run ``kill-NN`` is started (``crossdistill run RECIPE``); a target
   step ``k`` is drawn uniformly from 1 .. total-1; the benchmark tails the run's
   ``metrics.jsonl`` every 2 ms until a step record with ``step >= k`` appears, then sleeps a
   delay drawn uniformly from [0, one step's mean time in the reference run, checkpoints
   included) and sends SIGKILL. So a kill lands after step ``k`` (or a step later: the process
   keeps running during the poll interval and the delay), anywhere in what follows a step
   record: the checkpoint write of an even step (then a ``*.tmp`` folder is left), pruning of
   old checkpoints, the data loading, forward and backward of the next step. Then
   ``crossdistill run RECIPE --resume`` runs until it exits 0 (it is not killed again: one kill
   per run, so ``kills`` = runs), and its ``student.safetensors`` is compared with the
   reference: ``identical`` counts byte-identical files, ``max_abs_diff`` is the largest
   |difference| of any weight over all runs. Per kill the JSON records the target step, the
   last step the killed process logged, the checkpoint folders it left (names, ``.tmp``
   included), the checkpoint the resume started from, and the steps done twice. A run that
   finished before its kill (it did not, in practice) is not counted and another is drawn.

2. **Store writer** (``store_kills``, ``store_identical``; target store_identical =
   store_kills). A digits recipe with ``augment_slots: 3``, ``limit_train: 600`` and a float32
   store (``shard_size: 50``, 12 shards; teacher ``batch_size: 32``). The teacher is the same
   trained CNN wrapped in a ``module:Callable`` (``slow_teacher:slow_cnn``: tests/slow_teacher.py
   on PYTHONPATH, as tests/test_store.py uses it) that sleeps 30 ms per forward, so the write
   takes a few seconds and kills land mid-write. An uninterrupted ``crossdistill cache RECIPE``
   writes the reference store and times the write (``plan.json`` appearing → exit).
   For kill ``i`` a fresh store is started; the benchmark draws a shard ``j`` in 0 .. 11 and a
   delay in [0, one shard's write time), waits until ``j`` shard records (``shard-*.json``)
   exist, sleeps the delay, and sends SIGKILL. A kill after which ``manifest.json`` exists
   came too late and is not counted (another is drawn). Then ``crossdistill cache RECIPE``
   reruns until it exits 0 with a manifest, and every file of the store (``manifest.json``,
   ``plan.json``, each shard and shard record) is compared byte for byte with the reference:
   ``store_identical`` counts stores equal in every file.

A non-identical result is a library bug: its run or store folder is kept (not deleted) and the
notes say where.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    CHILD_ENV,
    command_line,
    machine,
    markdown_table,
    neighbours,
    write_results,
)

DIGITS = ROOT / "recipes" / "digits"
POLL_S = 0.002
TIMEOUT_S = 600
EPOCHS = 4
CHECKPOINT_EVERY = 2
STORE_SHARD, STORE_EXAMPLES, STORE_SLOTS = 50, 600, 3
SLOW_TEACHER_DIR = ROOT / "tests"  # slow_teacher.py, shared with tests/test_store.py


# ----------------------------------------------------------------------------- processes


def crossdistill(args: list[str], log: Path, env: dict[str, str] = CHILD_ENV) -> subprocess.Popen:
    """Start ``python -m crossdistill ARGS`` with its output going to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "crossdistill", *args],
            cwd=log.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def finish(proc: subprocess.Popen, log: Path, what: str) -> None:
    """Wait for ``proc``; raise with the end of its log when it fails."""
    rc = proc.wait(timeout=TIMEOUT_S)
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} exited with {rc}; end of {log}:\n{tail}")


def kill(proc: subprocess.Popen, sig: signal.Signals = signal.SIGKILL) -> int:
    """Send ``sig``; wait for the process to end; its exit code (a Python process exits
    130 / 143 after SIGINT / SIGTERM by itself when it handles them)."""
    os.kill(proc.pid, sig)
    return proc.wait(timeout=TIMEOUT_S)


def write_recipe(path: Path, raw: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def train_teacher(work: Path) -> Path:
    """recipes/digits/teacher.yaml, trained once into ``work`` (reused when already there)."""
    weights = work / "runs" / "digits_teacher" / "student.safetensors"
    if weights.is_file():
        return weights
    shutil.rmtree(weights.parent, ignore_errors=True)
    raw = yaml.safe_load((DIGITS / "teacher.yaml").read_text())
    raw["output"] = {"dir": str(work / "runs")}
    raw["train"].update(progress=False, device="cpu")
    recipe = write_recipe(work / "teacher.yaml", raw)
    log = work / "logs" / "teacher.log"
    finish(crossdistill(["run", str(recipe)], log), log, "training the teacher")
    return weights


# ----------------------------------------------------------------------------- 1. training


def kd_recipe(work: Path, teacher: Path) -> Path:
    raw = yaml.safe_load((DIGITS / "kd.yaml").read_text())
    raw["teacher"]["weights"] = str(teacher)
    raw["data"]["augment"] = {"name": "crop_flip", "params": {"padding": 1}}
    raw["train"].update(
        epochs=EPOCHS,
        checkpoint_every_steps=CHECKPOINT_EVERY,
        keep_checkpoints=3,
        log_every=1,
        progress=False,
        device="cpu",
    )
    raw["output"] = {"dir": str(work / "runs")}
    return write_recipe(work / "kd.yaml", raw)


def records(metrics: Path) -> list[dict[str, Any]]:
    if not metrics.is_file():
        return []
    out = []
    for line in metrics.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut by the kill
            out.append(json.loads(line))
    return out


class StepWatcher:
    """Tails a ``metrics.jsonl``: the highest ``"kind": "step"`` step seen so far."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest, self.step = path, 0, b"", 0

    def poll(self) -> int:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return self.step
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        for line in lines:
            record = json.loads(line)
            if record.get("kind") == "step":
                self.step = max(self.step, int(record["step"]))
        return self.step


def compare_students(a: Path, b: Path) -> tuple[bool, float]:
    """Byte-identical files?, and the largest |difference| of any weight."""
    same = a.read_bytes() == b.read_bytes()
    x, y = load_file(str(a)), load_file(str(b))
    if x.keys() != y.keys():
        return False, float("inf")
    diff = max(
        (float((x[k].double() - y[k].double()).abs().max()) if x[k].numel() else 0.0 for k in x),
        default=0.0,
    )
    return same, diff


def one_training_kill(
    recipe: Path,
    runs: Path,
    name: str,
    k: int,
    delay: float,
    reference: Path,
    sig: signal.Signals = signal.SIGKILL,
) -> dict:
    """Start a fresh run, send ``sig`` ``delay`` s after a step >= k is logged, resume it to
    the end, compare. ``rc_at_kill`` and ``first_log`` are what the signalled process did."""
    run = runs / name
    shutil.rmtree(run, ignore_errors=True)
    log = runs.parent / "logs" / f"{name}.log"
    log.unlink(missing_ok=True)
    args = ["run", str(recipe), "--name", name]
    proc = crossdistill(args, log)
    watcher = StepWatcher(run / "metrics.jsonl")
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None and watcher.poll() < k and time.monotonic() < deadline:
        time.sleep(POLL_S)
    seen = watcher.step
    time.sleep(delay)
    if proc.poll() is not None:  # finished (or failed) before the kill
        return {"target_step": k, "killed": False, "rc": proc.returncode}
    rc_at_kill = kill(proc, sig)
    first_log = log.read_text(errors="replace")
    found = records(run / "metrics.jsonl")
    last = max((r["step"] for r in found if r.get("kind") == "step"), default=0)
    root = run / "checkpoints"
    folders = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    result: dict[str, Any] = {
        "target_step": k,
        "delay_s": round(delay, 4),
        "killed": True,
        "step_seen_at_kill": seen,
        "last_step_logged": last,
        "checkpoints_left": folders,
        "in_checkpoint_write": any(f.endswith(".tmp") for f in folders),
        "rc_at_kill": rc_at_kill,
        "first_log": first_log[-1000:],
    }
    resume = crossdistill([*args, "--resume"], log)
    rc = resume.wait(timeout=TIMEOUT_S)
    result["resume_rc"] = rc
    resumes = [r for r in records(run / "metrics.jsonl") if r.get("kind") == "resume"]
    if resumes:
        result["resumed_from"] = Path(resumes[-1]["checkpoint"]).name
        result["resumed_at_step"] = resumes[-1]["step"]
        result["steps_redone"] = last - resumes[-1]["step"]
    else:
        result["resumed_from"] = None  # no checkpoint yet: the resume started from scratch
        result["steps_redone"] = last
    student = run / "student.safetensors"
    result["resumed"] = rc == 0 and student.is_file()
    if result["resumed"]:
        same, diff = compare_students(reference, student)
        result["identical"], result["max_abs_diff"] = same, diff
    else:
        result["identical"], result["max_abs_diff"] = False, None
        result["log_tail"] = log.read_text(errors="replace")[-2000:]
    if result["identical"]:
        shutil.rmtree(run)
    else:
        result["kept"] = str(run)
    return result


def training_section(work: Path, teacher: Path, kills: int, rng: random.Random) -> dict:
    recipe = kd_recipe(work, teacher)
    runs = work / "runs"
    shutil.rmtree(runs / "reference", ignore_errors=True)
    log = work / "logs" / "reference.log"
    log.unlink(missing_ok=True)
    start = time.perf_counter()
    finish(crossdistill(["run", str(recipe), "--name", "reference"], log), log, "reference")
    reference_s = time.perf_counter() - start
    reference = runs / "reference" / "student.safetensors"
    epochs = [r for r in records(runs / "reference" / "metrics.jsonl") if r["kind"] == "epoch"]
    total = epochs[-1]["step"]
    steps = [r for r in records(runs / "reference" / "metrics.jsonl") if r["kind"] == "step"]
    step_s = (steps[-1]["time"] - steps[0]["time"]) / (len(steps) - 1)  # checkpoints included
    rows: list[dict[str, Any]] = []
    attempts = 0
    while len(rows) < kills and attempts < 3 * kills:
        attempts += 1
        k, delay = rng.randint(1, total - 1), rng.uniform(0.0, step_s)
        row = one_training_kill(recipe, runs, f"kill-{len(rows):02d}", k, delay, reference)
        if not row["killed"]:
            print(f"  kill not landed (target step {k}, rc {row['rc']}); drawing another")
            continue
        rows.append(row)
        print(
            f"  kill {len(rows)}/{kills}: target step {k}, last logged {row['last_step_logged']}, "
            f"left {row['checkpoints_left']}, resumed from {row.get('resumed_from')}, "
            f"identical {row['identical']} (max diff {row['max_abs_diff']})",
            flush=True,
        )
    diffs = [r["max_abs_diff"] for r in rows if r["max_abs_diff"] is not None]
    return {
        "kills": len(rows),
        "resumed": sum(r["resumed"] for r in rows),
        "identical": sum(r["identical"] for r in rows),
        "max_abs_diff": max(diffs) if diffs else None,
        "kills_in_checkpoint_write": sum(r["in_checkpoint_write"] for r in rows),
        "kills_before_first_checkpoint": sum(r["resumed_from"] is None for r in rows),
        "kills_mid_epoch": sum(
            r["resumed_from"] is not None and "-step-" in r["resumed_from"] for r in rows
        ),
        "total_steps": total,
        "steps_per_epoch": total // EPOCHS,
        "reference_run_s": round(reference_s, 2),
        "reference_step_s": round(step_s, 4),
        "recipe": str(recipe.relative_to(ROOT)),
        "recipe_yaml": yaml.safe_load(recipe.read_text()),
        "per_kill": rows,
    }


# ----------------------------------------------------------------------------- 2. the store


def store_recipe(work: Path, teacher: Path) -> Path:
    raw = yaml.safe_load((DIGITS / "kd.yaml").read_text())
    raw["teacher"]["model"] = "slow_teacher:slow_cnn"
    raw["teacher"]["weights"] = str(teacher)
    raw["data"].update(
        augment={"name": "crop_flip", "params": {"padding": 1}},
        augment_slots=STORE_SLOTS,
        limit_train=STORE_EXAMPLES,
        limit_mode="first",  # published numbers used the first N (limit_mode's old behaviour)
    )
    raw["train"].update(progress=False, device="cpu")
    raw["output"] = {"dir": str(work / "runs")}
    raw["store"] = {
        "path": str(work / "stores" / "reference"),
        "dtype": "float32",
        "shard_size": STORE_SHARD,
        "batch_size": 32,
    }
    return write_recipe(work / "store.yaml", raw)


def store_files(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()
    }


def one_store_kill(
    recipe: Path, env: dict[str, str], store: Path, shard: int, delay: float, reference: Path
) -> dict:
    shutil.rmtree(store, ignore_errors=True)
    log = store.parent.parent / "logs" / f"{store.name}.log"
    log.unlink(missing_ok=True)
    args = ["cache", str(recipe), "--set", f"store.path={store}"]
    proc = crossdistill(args, log, env)
    records_dir = store / "shards"
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        done = len(list(records_dir.glob("shard-*.json"))) if records_dir.is_dir() else 0
        if done >= shard:
            break
        time.sleep(POLL_S)
    time.sleep(delay)
    if proc.poll() is not None:
        return {"shard": shard, "delay_s": delay, "killed": False, "rc": proc.returncode}
    kill(proc)
    left = sorted(p.name for p in records_dir.iterdir()) if records_dir.is_dir() else []
    result: dict[str, Any] = {
        "shard": shard,
        "delay_s": round(delay, 4),
        "killed": True,
        "interrupted": not (store / "manifest.json").exists(),
        "shard_records_left": sum(n.endswith(".json") for n in left),
        "temporary_files_left": [n for n in left if n.endswith(".tmp")],
        # shard written, its record not yet: the rerun must check and keep or rewrite it
        "shards_without_record": [
            n
            for n in left
            if n.endswith(".safetensors") and n.removesuffix(".safetensors") + ".json" not in left
        ],
    }
    if not result["interrupted"]:
        return result
    reruns = 0
    while not (store / "manifest.json").exists() and reruns < 3:
        reruns += 1
        rc = crossdistill(args, log, env).wait(timeout=TIMEOUT_S)
        result["rerun_rc"] = rc
    result["reruns"] = reruns
    have, want = store_files(store), store_files(reference)
    result["complete"] = (store / "manifest.json").exists()
    result["different_files"] = sorted(
        name for name in set(have) | set(want) if have.get(name) != want.get(name)
    )
    result["identical"] = result["complete"] and not result["different_files"]
    if result["identical"]:
        shutil.rmtree(store)
    else:
        result["kept"] = str(store)
        result["log_tail"] = log.read_text(errors="replace")[-2000:]
    return result


def store_section(work: Path, teacher: Path, kills: int, rng: random.Random) -> dict:
    recipe = store_recipe(work, teacher)
    paths = [str(SLOW_TEACHER_DIR), CHILD_ENV.get("PYTHONPATH")]
    env = {**CHILD_ENV, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    stores = work / "stores"
    reference = stores / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    log = work / "logs" / "store-reference.log"
    log.unlink(missing_ok=True)
    proc = crossdistill(["cache", str(recipe)], log, env)
    while proc.poll() is None and not (reference / "plan.json").exists():
        time.sleep(POLL_S)
    start = time.perf_counter()
    finish(proc, log, "the reference store")
    write_s = time.perf_counter() - start
    n_shards = -(-STORE_EXAMPLES // STORE_SHARD)
    shard_s = write_s / n_shards
    rows: list[dict[str, Any]] = []
    late = 0
    while len(rows) < kills and late < 2 * kills:
        shard = rng.randrange(n_shards)
        delay = rng.uniform(0.0, shard_s)
        row = one_store_kill(recipe, env, stores / f"kill-{len(rows):02d}", shard, delay, reference)
        if not row["killed"] or not row["interrupted"]:
            late += 1
            print(f"  store kill came too late (shard {shard}, +{delay:.3f} s); drawing another")
            continue
        rows.append(row)
        print(
            f"  store kill {len(rows)}/{kills}: after {row['shard_records_left']} shards "
            f"(+{delay:.3f} s), temporary files {row['temporary_files_left']}, "
            f"identical {row['identical']} {row['different_files']}",
            flush=True,
        )
    return {
        "store_kills": len(rows),
        "store_identical": sum(r["identical"] for r in rows),
        "store_kills_with_temporary_file": sum(bool(r["temporary_files_left"]) for r in rows),
        "store_kills_between_shard_and_record": sum(bool(r["shards_without_record"]) for r in rows),
        "store_kills_too_late": late,
        "store_write_s": round(write_s, 3),
        "store_shards": n_shards,
        "store_recipe": str(recipe.relative_to(ROOT)),
        "store_recipe_yaml": yaml.safe_load(recipe.read_text()),
        "store_per_kill": rows,
    }


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 kills of each kind")
    parser.add_argument("--kills", type=int, default=None, help="default: 20 (3 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    kills = args.kills or (3 if args.quick else 20)
    rng = random.Random(args.seed)
    work = ROOT / "runs" / ("bench-quick" if args.quick else "bench") / "faults"
    work.mkdir(parents=True, exist_ok=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    others_before = neighbours()
    started = time.perf_counter()
    teacher = train_teacher(work)
    print(f"training: {kills} kills", flush=True)
    training = training_section(work, teacher, kills, rng)
    print(f"store writer: {kills} kills", flush=True)
    store = store_section(work, teacher, kills, rng)
    load_after = [round(x, 2) for x in os.getloadavg()]
    others_after = neighbours()

    result: dict[str, Any] = {
        "kills": training["kills"],
        "resumed": training["resumed"],
        "identical": training["identical"],
        "max_abs_diff": training["max_abs_diff"],
        "store_kills": store["store_kills"],
        "store_identical": store["store_identical"],
        "targets": {"identical": "= kills", "store_identical": "= store_kills"},
        "targets_met": {
            "identical": training["identical"] == training["kills"] >= kills,
            "store_identical": store["store_identical"] == store["store_kills"] >= kills,
        },
        **{k: v for k, v in training.items() if k not in ("kills", "resumed", "identical")},
        **{k: v for k, v in store.items() if k not in ("store_kills", "store_identical")},
        "seed": args.seed,
        "quick": args.quick,
        "child_env": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        "other_processes_before": others_before,
        "other_processes_after": others_after,
        "wall_s": round(time.perf_counter() - started, 1),
        "command": command_line(),
        "machine": machine(),
    }
    notes = []
    if not result["targets_met"]["identical"]:
        bad = [r for r in training["per_kill"] if not r["identical"]]
        notes.append(
            f"MISSED target: {training['identical']} of {training['kills']} killed runs resumed "
            f"to a bit-identical student; not identical: "
            + "; ".join(
                f"{r.get('kept')} (killed after step {r['last_step_logged']}, left "
                f"{r['checkpoints_left']}, resumed from {r.get('resumed_from')}, max diff "
                f"{r['max_abs_diff']})"
                for r in bad
            )
        )
    if not result["targets_met"]["store_identical"]:
        bad = [r for r in store["store_per_kill"] if not r["identical"]]
        notes.append(
            f"MISSED target: {store['store_identical']} of {store['store_kills']} killed stores "
            "ended equal to the reference in every file; not identical: "
            + "; ".join(f"{r.get('kept')} (files {r['different_files']})" for r in bad)
        )
    notes.append(
        f"Shared machine: {os.cpu_count()} cores, load average (1, 5, 15 min) {load_before} "
        f"before and {load_after} after. Other benchmark/test processes running at the start: "
        f"{others_before or 'none'}; at the end: {others_after or 'none'}. Load changes where "
        "kills land in time, not what a resumed run computes."
    )
    notes.append(
        "One kill per run (or store), in the first process; the resume (or rerun) is not "
        "killed. Kills land at random steps (a random fraction of one step's time after a "
        "`step` record with step ≥ the drawn target appears in metrics.jsonl) and at random "
        "points of the store write (after a drawn number of shard records, plus a random "
        "fraction of one shard's write time)."
    )
    if not store["store_kills_with_temporary_file"] + store["store_kills_between_shard_and_record"]:
        notes.append(
            "Every store-writer kill landed while the teacher was computing a shard (most of "
            "the write time: it sleeps 30 ms per forward), none inside the atomic write of a "
            "shard file or between a shard and its record, windows of well under a "
            "millisecond that polling cannot aim at; tests/test_store.py covers a write that "
            "fails midway (full disk)."
        )
    result["notes"] = notes
    table = markdown_table(
        ["measure", "value", "target"],
        [
            ("training kills (SIGKILL at a random step)", training["kills"], ""),
            ("… resumed to the end with --resume", training["resumed"], ""),
            (
                "… final student.safetensors bit-identical",
                training["identical"],
                f"= kills: {'met' if result['targets_met']['identical'] else 'MISSED'}",
            ),
            ("… max abs weight difference", training["max_abs_diff"], ""),
            (
                "… killed during a checkpoint write (.tmp left)",
                training["kills_in_checkpoint_write"],
                "",
            ),
            ("… resumed from a mid-epoch checkpoint", training["kills_mid_epoch"], ""),
            ("… killed before the first checkpoint", training["kills_before_first_checkpoint"], ""),
            ("store-writer kills (SIGKILL mid-write)", store["store_kills"], ""),
            (
                "… rerun to a store equal in every file",
                store["store_identical"],
                f"= store_kills: {'met' if result['targets_met']['store_identical'] else 'MISSED'}",
            ),
            (
                "… killed with a temporary shard file left",
                store["store_kills_with_temporary_file"],
                "",
            ),
            (
                "… killed between a shard file and its record",
                store["store_kills_between_shard_and_record"],
                "",
            ),
        ],
    )
    kill_rows = markdown_table(
        ["kill", "target step", "last logged", "checkpoints left", "resumed from", "identical"],
        [
            (
                i,
                r["target_step"],
                r["last_step_logged"],
                ", ".join(r["checkpoints_left"]) or "-",
                r["resumed_from"] or "(scratch)",
                "yes" if r["identical"] else "**no**",
            )
            for i, r in enumerate(training["per_kill"])
        ],
    )
    markdown = write_results(
        "faults" + (".quick" if args.quick else ""),
        result,
        table + "\n\n" + kill_rows,
        "\n".join(f"- {n}" for n in notes),
    )
    print(markdown)


if __name__ == "__main__":
    main()
