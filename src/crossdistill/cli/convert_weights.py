"""``crossdistill convert-weights IN OUT.safetensors``: a PyTorch state dict as safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossdistill.cli._app import app, console


@app.command("convert-weights")
def convert_weights(
    source: Annotated[
        Path, typer.Argument(metavar="IN", help="a .pt/.pth/.bin state dict (or safetensors)")
    ],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="the .safetensors file to write")],
    strip_prefix: Annotated[
        str | None, typer.Option(help='a key prefix to remove, e.g. "module." (DataParallel)')
    ] = None,
    rename: Annotated[
        list[str] | None,
        typer.Option("--rename", help="OLD=NEW: key prefix OLD becomes NEW (repeatable)"),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            help="the key of the file's dict that holds the state dict (default: the file "
            "itself, else state_dict / model / model_state_dict)"
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite OUT if it exists")] = False,
) -> None:
    """Convert a PyTorch state dict to a safetensors file that recipes name as ``weights:``.

    IN is read with ``torch.load(weights_only=True)``: tensors only, never a pickled object.
    Keys are mapped as a recipe's ``weights: {strip_prefix, rename}`` maps them.
    """
    import torch
    from safetensors.torch import save_file

    from crossdistill._util.files import atomic_path
    from crossdistill.config import WeightsSpec
    from crossdistill.errors import CheckpointError, ConfigError
    from crossdistill.models.registry import read_state_dict

    if out.suffix.lower() != ".safetensors":
        raise ConfigError(
            f"convert-weights: {out} does not end in .safetensors",
            hint="name the output OUT.safetensors",
        )
    if out.exists() and not force:
        raise CheckpointError(
            f"convert-weights: {out} already exists",
            hint="pass --force to overwrite it, or choose another OUT",
        )
    renames: dict[str, str] = {}
    for item in rename or []:
        old, sep, new = item.partition("=")
        if not sep:
            raise ConfigError(
                f"--rename {item!r} is not OLD=NEW", hint="e.g. --rename backbone=features"
            )
        renames[old] = new
    spec = WeightsSpec(path=source, strip_prefix=strip_prefix, rename=renames)
    state, used = read_state_dict(spec, "convert-weights", key=key)
    if used is not None:
        console.print(f"the state dict under {used!r} in {source}", highlight=False)
    # safetensors refuses tensors that share memory (tied weights) or are not contiguous:
    # each one gets its own copy, so the file loads back with every key
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            tensor = tensor.clone()
        elif ptr:
            seen.add(ptr)
        tensors[name] = tensor
    # save_file onto the temporary path: serialising to bytes first would hold a second copy
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "source": source.name})
    typer.echo(f"{out}: {len(tensors)} tensors, {out.stat().st_size:,} bytes")
