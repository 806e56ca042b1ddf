"""The whole bad-input suite through the real command line, each outcome classified; and the
kill, signal and two-writer experiments.

    python benchmarks/bad_inputs.py            # every case; 5 kills, 3+3 signals, 3 two-writers
    python benchmarks/bad_inputs.py --quick    # every case; 2 kills, 1+1 signals, 1 two-writers

Writes benchmarks/results/bad_inputs[.quick].json and .md. Everything runs under
runs/bench[-quick]/bad_inputs/ (git-ignored); every child is ``python -m crossdistill ...`` with
one intra-op thread.

1. **Cases** (``cases``, ``clean_errors``, ``tracebacks``, ``silent_acceptances``, ``data_lost``,
   ``code_executed``, ``left_behind``; targets: clean_errors = cases, the others 0). The
   catalogue is ``CASES`` of tests/test_bad_inputs.py — the test suite's own list, so the
   benchmark and the tests never drift apart. Each case gets a fresh workspace with a finished
   run (``runs/previous``), its setup writes the bad input, its command runs, and the outcome is
   classified from what the process did, not from the phrases the tests expect:

   - *clean error*: exit code 2, ``error:`` on stderr, no ``Traceback``;
   - *traceback*: a ``Traceback`` on stderr, or an exit code other than 0 and 2;
   - *silent acceptance*: exit code 0 (every case is input the command must refuse);
   - *data lost*: a file that was in the workspace before the command changed or vanished;
   - *code executed*: a ``PWNED`` marker file appeared (the payloads of the trust cases write one);
   - *left behind*: a case the tests mark as detectable before training left a new run folder.

2. **Kills** (``kills``, ``identical``): ``kill -9`` at a random step of a KD run, then
   ``--resume``; the final student is compared byte for byte with an uninterrupted run's
   (benchmarks/faults.py's experiment, fewer kills).
3. **Signals** (``interrupts``, ``interrupt_messages``, ``interrupt_identical``): SIGINT and
   SIGTERM at a random step: the process must exit 130 / 143 with one line naming the
   ``--resume`` command, and the resumed run must equal the uninterrupted one.
4. **Two writers** (``two_writers``, ``two_writers_refused``,
   ``two_writers_one_record_per_epoch``): a second ``crossdistill run --resume`` on a run another
   process is training (``two_writers_overlapped`` counts those where the first was still
   running when the second ended): it must be refused (exit 2, ``locked``), and the first must
   finish with exactly one epoch record per epoch.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))  # the case catalogue and its helpers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import faults  # noqa: E402
from _common import command_line, machine, markdown_table, neighbours, write_results  # noqa: E402
from conftest import run_cli, squash, tree_hashes  # noqa: E402
from test_bad_inputs import CASES, Workspace  # noqa: E402

MARKER = "PWNED"


# ----------------------------------------------------------------------------- 1. the cases


def classify(rc: int, stderr: str) -> str:
    """clean / traceback / silent, from the exit code and stderr alone."""
    if "Traceback" in stderr or rc not in (0, 2):
        return "traceback"
    if rc == 0:
        return "silent"
    return "clean" if "error:" in stderr else "traceback"


def one_case(name: str, work: Path, teacher_run: Path) -> dict[str, Any]:
    root = work / "cases" / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    ws = Workspace(root, teacher_run / "student.safetensors")
    shutil.copytree(teacher_run, ws.runs / "previous")
    args = CASES[name].setup(ws)
    before_runs, before_all = tree_hashes(ws.runs), tree_hashes(root)
    result = run_cli(args, cwd=root)
    after_runs, after_all = tree_hashes(ws.runs), tree_hashes(root)
    lost = sorted(p for p, h in before_all.items() if after_all.get(p) != h)
    new_runs = sorted(
        p for p in set(after_runs) - set(before_runs) if "/" not in p and after_runs[p] == "dir"
    )
    row = {
        "case": name,
        "command": ["crossdistill", *args],
        "rc": result.returncode,
        "outcome": classify(result.returncode, result.stderr),
        "data_lost": lost,
        "code_executed": any(Path(p).name == MARKER for p in after_all),
        "left_behind": new_runs if CASES[name].before_training else [],
        "message": squash(result.stderr)[-600:],
    }
    if row["outcome"] == "clean" and not (lost or row["code_executed"] or row["left_behind"]):
        shutil.rmtree(root)
    return row


def cases_section(work: Path, teacher_run: Path, names: list[str], jobs: int) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(lambda n: one_case(n, work, teacher_run), names))
    for row in rows:
        flags = [k for k in ("data_lost", "code_executed", "left_behind") if row[k]]
        print(f"  {row['case']:34s} {row['outcome']:9s} rc {row['rc']} {' '.join(flags)}")
    return {
        "cases": len(rows),
        "clean_errors": sum(r["outcome"] == "clean" for r in rows),
        "tracebacks": sum(r["outcome"] == "traceback" for r in rows),
        "silent_acceptances": sum(r["outcome"] == "silent" for r in rows),
        "data_lost": sum(bool(r["data_lost"]) for r in rows),
        "code_executed": sum(r["code_executed"] for r in rows),
        "left_behind": sum(bool(r["left_behind"]) for r in rows),
        "per_case": rows,
    }


def teacher_run(work: Path) -> Path:
    """recipes/digits/teacher.yaml trained once (reused): the workspaces' ``runs/previous``."""
    return faults.train_teacher(work).parent


# ----------------------------------------------------------------------------- 3. signals


def signal_section(
    work: Path, teacher: Path, per_signal: int, rng: random.Random, reference: dict[str, Any]
) -> dict[str, Any]:
    recipe = faults.kd_recipe(work, teacher)
    runs = work / "runs"
    rows: list[dict[str, Any]] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        for i in range(per_signal):
            k = rng.randint(1, reference["total_steps"] - 1)
            delay = rng.uniform(0.0, reference["reference_step_s"])
            name = f"{sig.name.lower()}-{i:02d}"
            row = faults.one_training_kill(
                recipe, runs, name, k, delay, runs / "reference" / "student.safetensors", sig=sig
            )
            if not row["killed"]:
                continue
            log = row["first_log"]
            row["signal"] = sig.name
            row["expected_rc"] = 128 + sig
            row["message_ok"] = (
                row["rc_at_kill"] == 128 + sig and "--resume" in log and "Traceback" not in log
            )
            rows.append(row)
            print(
                f"  {name}: rc {row['rc_at_kill']}, message {'ok' if row['message_ok'] else 'NO'}"
                f", identical {row['identical']}",
                flush=True,
            )
    return {
        "interrupts": len(rows),
        "interrupt_messages": sum(r["message_ok"] for r in rows),
        "interrupt_identical": sum(r["identical"] for r in rows),
        "per_interrupt": rows,
    }


# ----------------------------------------------------------------------------- 4. two writers


def two_writers_section(work: Path, teacher: Path, n: int) -> dict[str, Any]:
    """A second ``--resume`` started while the first process is mid-run. The recipe is the
    kills' recipe trained for 5× the epochs, so the first is still training when the second
    (which pays for importing torch) reaches the lock."""
    raw = yaml.safe_load(faults.kd_recipe(work, teacher).read_text())
    epochs = raw["train"]["epochs"] = 5 * faults.EPOCHS
    recipe = faults.write_recipe(work / "kd_long.yaml", raw)
    runs = work / "runs"
    rows: list[dict[str, Any]] = []
    for i in range(n):
        name = f"two-{i:02d}"
        run = runs / name
        shutil.rmtree(run, ignore_errors=True)
        log = work / "logs" / f"{name}.log"
        log.unlink(missing_ok=True)
        args = ["run", str(recipe), "--name", name]
        first = faults.crossdistill(args, log)
        watcher = faults.StepWatcher(run / "metrics.jsonl")
        deadline = time.monotonic() + faults.TIMEOUT_S
        while first.poll() is None and watcher.poll() < 3 and time.monotonic() < deadline:
            time.sleep(faults.POLL_S)
        second = run_cli([*args, "--resume"], cwd=work)
        still_running = first.poll() is None  # else the experiment did not overlap
        rc = first.wait(timeout=faults.TIMEOUT_S)
        records = faults.records(run / "metrics.jsonl")
        per_epoch = sorted(r["epoch"] for r in records if r.get("kind") == "epoch")
        row = {
            "overlapped": still_running,
            "second_rc": second.returncode,
            "second_message": squash(second.stderr)[-400:],
            "refused": second.returncode == 2 and "locked" in second.stderr,
            "first_rc": rc,
            "epoch_records": per_epoch,
            "one_record_per_epoch": rc == 0 and per_epoch == list(range(1, epochs + 1)),
        }
        rows.append(row)
        print(
            f"  {name}: overlapped {still_running}, second rc {second.returncode}, "
            f"epoch records {len(per_epoch)} of {epochs}",
            flush=True,
        )
        if row["refused"] and row["one_record_per_epoch"]:
            shutil.rmtree(run)
    return {
        "two_writers": len(rows),
        "two_writers_overlapped": sum(r["overlapped"] for r in rows),
        "two_writers_refused": sum(r["refused"] for r in rows),
        "two_writers_one_record_per_epoch": sum(r["one_record_per_epoch"] for r in rows),
        "per_two_writers": rows,
    }


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer kills, signals, writers")
    parser.add_argument("--cases", nargs="+", help="only these cases (printed, not written)")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # Started in the background by a shell, this process may ignore SIGINT, and its children
    # would inherit that: a handled signal is reset to its default in a child, so they get
    # Python's own KeyboardInterrupt, as a terminal's Ctrl-C would.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    kills, per_signal, writers = (2, 1, 1) if args.quick else (5, 3, 3)
    rng = random.Random(args.seed)
    work = ROOT / "runs" / ("bench-quick" if args.quick else "bench") / "bad_inputs"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    teacher = teacher_run(work)
    names = args.cases or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    print(f"cases: {len(names)}", flush=True)
    cases = cases_section(work, teacher, names, args.jobs)
    if args.cases:
        return
    weights = teacher / "student.safetensors"
    print(f"kills: {kills}", flush=True)
    training = faults.training_section(work, weights, kills, rng)
    print(f"signals: {per_signal} each of SIGINT, SIGTERM", flush=True)
    signals = signal_section(work, weights, per_signal, rng, training)
    print(f"two writers: {writers}", flush=True)
    two = two_writers_section(work, weights, writers)

    result: dict[str, Any] = {
        **{k: v for k, v in cases.items() if k != "per_case"},
        "kills": training["kills"],
        "identical": training["identical"],
        **{k: v for k, v in signals.items() if k != "per_interrupt"},
        **{k: v for k, v in two.items() if k != "per_two_writers"},
    }
    targets = {
        "clean_errors": result["clean_errors"] == result["cases"],
        **{k: result[k] == 0 for k in ("tracebacks", "silent_acceptances", "data_lost")},
        "code_executed": result["code_executed"] == 0,
        "left_behind": result["left_behind"] == 0,
        "identical": result["identical"] == result["kills"],
        "interrupt_messages": result["interrupt_messages"] == result["interrupts"],
        "interrupt_identical": result["interrupt_identical"] == result["interrupts"],
        "two_writers_refused": result["two_writers_refused"] == result["two_writers"],
        "two_writers_one_record_per_epoch": result["two_writers_one_record_per_epoch"]
        == result["two_writers"],
    }
    result.update(
        targets_met=targets,
        per_case=cases["per_case"],
        per_kill=training["per_kill"],
        per_interrupt=signals["per_interrupt"],
        per_two_writers=two["per_two_writers"],
        quick=args.quick,
        seed=args.seed,
        load_avg_before=load_before,
        load_avg_after=[round(x, 2) for x in os.getloadavg()],
        neighbours=neighbours(),
        wall_s=round(time.perf_counter() - started, 1),
        command=command_line(),
        machine=machine(),
    )

    def met(key: str) -> str:
        return "met" if targets[key] else "MISSED"

    table = markdown_table(
        ["measure", "value", "target"],
        [
            ("bad-input cases (tests/test_bad_inputs.py CASES)", result["cases"], ""),
            ("… clean errors (exit 2, one message)", result["clean_errors"],
             f"= cases: {met('clean_errors')}"),
            ("… tracebacks", result["tracebacks"], f"0: {met('tracebacks')}"),
            ("… accepted without a word", result["silent_acceptances"],
             f"0: {met('silent_acceptances')}"),
            ("… data lost (a pre-existing file changed)", result["data_lost"],
             f"0: {met('data_lost')}"),
            ("… code from a run/export folder executed", result["code_executed"],
             f"0: {met('code_executed')}"),
            ("… run folder left behind", result["left_behind"], f"0: {met('left_behind')}"),
            ("kill -9 at a random step, then --resume", result["kills"], ""),
            ("… bit-identical student", result["identical"], f"= kills: {met('identical')}"),
            ("SIGINT / SIGTERM at a random step", result["interrupts"], ""),
            ("… exit 130/143 with the --resume line", result["interrupt_messages"],
             f"= interrupts: {met('interrupt_messages')}"),
            ("… bit-identical after --resume", result["interrupt_identical"],
             f"= interrupts: {met('interrupt_identical')}"),
            ("a second --resume while a run trains", result["two_writers"], ""),
            ("… refused (locked)", result["two_writers_refused"],
             f"= runs: {met('two_writers_refused')}"),
            ("… overlapped (the first still training)", result["two_writers_overlapped"], ""),
            ("… first run finished with one record per epoch",
             result["two_writers_one_record_per_epoch"],
             f"= runs: {met('two_writers_one_record_per_epoch')}"),
        ],
    )  # fmt: skip
    bad = [r for r in cases["per_case"] if r["outcome"] != "clean" or r["data_lost"]]
    notes = [
        "Outcomes are classified from the exit code, stderr and the workspace's files, not "
        "from the phrases tests/test_bad_inputs.py expects (the tests check those)."
    ]
    if bad:
        notes.append(
            "Not clean: "
            + "; ".join(
                f"{r['case']} ({r['outcome']}, rc {r['rc']}): {r['message'][-200:]}" for r in bad
            )
        )
    notes.append(
        f"Shared machine: load average {load_before} before, {result['load_avg_after']} after; "
        f"other processes: {result['neighbours'] or 'none'}."
    )
    markdown = write_results(
        "bad_inputs" + (".quick" if args.quick else ""),
        result,
        table,
        "\n".join(f"- {n}" for n in notes),
    )
    print(markdown)


if __name__ == "__main__":
    main()
