"""How fast the command line answers, as a ratio to ``python -c "import torch"``.

    python benchmarks/cli.py            # 15 timed rounds
    python benchmarks/cli.py --quick    # 3 timed rounds (results/cli.quick.*)

Each round starts every command below as a fresh process (``python -m crossdistill ...``, one
intra-op thread, offline, as a user's shell would) and times it from start to exit with
``time.perf_counter()``:

- ``--help``, ``--version``: must not import torch (checked once with ``-X importtime``);
- ``list losses``, ``show kd``, ``doctor``: read the registries or torch's devices, so they
  import torch (a plug-in from an installed package registers by importing its module, and a
  listing read from a static file could not show it), and nothing heavier: no transformers, no
  sentence-transformers, no matplotlib;
- the reference, ``python -c "import torch"``: the floor for any command that needs torch.

The commands are INTERLEAVED and the order rotates from round to round, so that every command
samples the same load on a shared machine; one untimed warmup round fills the page cache. The
result is each command's median (quartiles, min) wall time and the ratio of its median to the
reference's median measured in the same rounds. Target (issue 22): every one of them under
1.5 s on this machine; the ratio says how much of that is torch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CHILD_ENV, markdown_table, provenance, summarize, write_results

TARGET_S = 1.5
REFERENCE = "import torch"
COMMANDS: dict[str, list[str]] = {
    "--help": ["-m", "crossdistill", "--help"],
    "--version": ["-m", "crossdistill", "--version"],
    "list losses": ["-m", "crossdistill", "list", "losses"],
    "show kd": ["-m", "crossdistill", "show", "kd"],
    "doctor": ["-m", "crossdistill", "doctor"],
    REFERENCE: ["-c", "import torch"],
}
HEAVY = ("torch", "transformers", "sentence_transformers", "matplotlib")


def start(args: list[str]) -> float:
    """Seconds from starting ``python ARGS`` to its exit (a failure stops the benchmark)."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=CHILD_ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds


def imported(args: list[str]) -> list[str]:
    """Which of the heavy packages ``python ARGS`` imports (read from ``-X importtime``)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args], env=CHILD_ENV, capture_output=True, text=True
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    return [name for name in HEAVY if name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 timed rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 15)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 15)
    began = time.perf_counter()
    names = list(COMMANDS)
    for name in names:  # warmup: page cache, .pyc files
        start(COMMANDS[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(start(COMMANDS[name]))
    reference = summarize(times[REFERENCE])["median_ms"]
    commands = {}
    for name in names:
        stats = summarize(times[name])
        commands[name] = {
            **stats,
            "ratio_to_import_torch": round(stats["median_ms"] / reference, 3),
            "under_target": stats["median_ms"] < 1000 * TARGET_S,
            "imports": imported(COMMANDS[name]),
        }
    result = {
        "benchmark": "cli",
        "rounds": rounds,
        "target_s": TARGET_S,
        "reference": f'python -c "{REFERENCE}"',
        # set: no .pyc files are read or written, so every start compiles crossdistill's sources
        "pythondontwritebytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        "commands": commands,
        **provenance(began),
    }
    rows = [
        [
            f"`{'crossdistill ' + name if name != REFERENCE else 'python -c ' + repr(name)}`",
            f"{c['median_ms'] / 1000:.2f}",
            f"{c['p25_ms'] / 1000:.2f}–{c['p75_ms'] / 1000:.2f}",
            f"{c['ratio_to_import_torch']:.2f}",
            "yes" if c["under_target"] else "**no**",
            ", ".join(c["imports"]) or "-",
        ]
        for name, c in commands.items()
    ]
    table = markdown_table(
        ["command", "median s", "p25–p75 s", "× import torch", f"< {TARGET_S} s", "imports"],
        rows,
    )
    notes = (
        f"{rounds} interleaved rounds (rotating order) after one warmup round; each command a "
        "fresh process with one intra-op thread. The ratio is each median over the median of "
        f'`python -c "{REFERENCE}"` in the same rounds. `--help` and `--version` import no '
        "torch; `list`, `show` and `doctor` read the registries or the devices and import torch "
        "(and nothing heavier)."
    )
    if result["pythondontwritebytecode"]:
        notes += (
            " PYTHONDONTWRITEBYTECODE was set: every start compiled crossdistill's sources "
            "(no .pyc), which an installed package does not."
        )
    print(write_results("cli.quick" if args.quick else "cli", result, table, notes))


if __name__ == "__main__":
    main()
