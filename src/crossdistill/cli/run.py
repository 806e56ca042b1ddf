"""``crossdistill run RECIPE``: train a student as a recipe says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from crossdistill.cli._app import app, overrides, print_metrics, state
from crossdistill.cli._signals import Interrupted, command_line, on_interrupt


@app.command(context_settings={"allow_extra_args": True})
def run(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="recipe YAML")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override KEY=VALUE")] = None,
    name: Annotated[str | None, typer.Option(help="run name (default: the recipe's)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="replace an existing run folder of the same name (finished or not), once the "
            "recipe's checks have passed"
        ),
    ] = False,
    nproc: Annotated[
        int, typer.Option(min=1, help="processes on this machine (DDP via torchrun)")
    ] = 1,
    nnodes: Annotated[int, typer.Option(min=1, help="machines taking part (DDP)")] = 1,
    node_rank: Annotated[int, typer.Option(min=0, help="this machine's rank (0..nnodes-1)")] = 0,
    master_addr: Annotated[str, typer.Option(help="address of the node-rank-0 machine")] = (
        "127.0.0.1"
    ),
    master_port: Annotated[int, typer.Option(help="a free TCP port on that machine")] = 29500,
    generations: Annotated[
        int | None,
        typer.Option(
            help="born-again training: N generations, each student the next one's teacher "
            "(the recipe's `generations: N`)"
        ),
    ] = None,
) -> None:
    """Train a student as the recipe says; writes runs/<name>/.

    An existing run folder is refused unless `--resume` continues it or `--overwrite` replaces
    it. `--nproc N` (and `--nnodes`, `--node-rank`, `--master-addr`, `--master-port` for several
    machines) launches the same command under torchrun: data-parallel training, gloo on CPU,
    nccl on CUDA. `torchrun ... -m crossdistill run RECIPE` works the same.
    """
    from crossdistill.config import load_recipe
    from crossdistill.errors import ConfigError, WriteError
    from crossdistill.pipeline import run_recipe
    from crossdistill.runs import last_checkpoint

    set_ = overrides(set_, ctx.args)
    if generations is not None:  # an override like any other: a resume repeats it
        set_ = [*set_, f"generations={generations}"]
    if resume and overwrite:
        raise ConfigError(
            "--resume and --overwrite contradict each other",
            hint="--resume continues the run folder, --overwrite replaces it: pass one",
        )
    # JSON-quoted so that YAML reads the name as a string even when it looks like a number
    changes = set_ + ([f"name={json.dumps(name)}"] if name else [])
    processes = ["--nproc", str(nproc)] if nproc > 1 else []  # a resume needs the same ones
    if nnodes > 1:
        processes += ["--nnodes", str(nnodes), "--node-rank", str(node_rank)]
        processes += ["--master-addr", master_addr, "--master-port", str(master_port)]
    options = ["--resume", *(["--name", name] if name else []), *processes]
    again = command_line("run", recipe, set_ or [], *options)
    run_dir: list[Path] = []  # known once the recipe is read

    def where() -> str:
        found = last_checkpoint(run_dir[0]) if run_dir else None
        last = f"the last checkpoint is {found}" if found else "no checkpoint was written yet"
        return f"{last}; continue with: {again}"

    on_interrupt(where)
    if (nproc > 1 or nnodes > 1) and "LOCAL_RANK" not in os.environ:
        if node_rank >= nnodes:
            raise typer.BadParameter(f"--node-rank {node_rank} must be below --nnodes {nnodes}")
        # what can be checked here is, so that a bad recipe gives one message, not one per rank
        spec = load_recipe(recipe, changes)
        run_dir.append(spec.run_dir)
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
        args = [str(recipe), *(f"--set={o}" for o in changes), *(["--resume"] * resume)]
        args += ["--overwrite"] * overwrite
        imports = [f"--import={m}" for m in state["imports"]]
        command = [sys.executable, "-m", "torch.distributed.run", *launch,
                   f"--nproc_per_node={nproc}", "-m", "crossdistill", *imports, "run",
                   *args]  # fmt: skip
        torchrun = subprocess.Popen(command)
        try:
            raise typer.Exit(torchrun.wait())
        except Interrupted as exc:  # torchrun passes the signal on to every rank
            torchrun.send_signal(exc.signum)
            torchrun.wait()
            raise
    spec = load_recipe(recipe, changes)
    run_dir.append(spec.run_dir)
    try:
        result = run_recipe(spec, resume=resume, overwrite=overwrite)
    except WriteError as exc:  # the disk filled up: the checkpoints so far are kept
        raise exc.with_next_step(f"continue with `{again}`") from exc
    if int(os.environ.get("RANK", "0")) == 0:
        metrics = result.metrics
        if isinstance(metrics.get("validation"), dict):
            print_metrics(metrics["validation"], f"run {result.run_dir}: last validation")
        print_metrics(metrics, f"run {result.run_dir}")
        typer.echo(str(result.run_dir))
