"""Packaging and import hygiene: what a wheel ships, what importing does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "crossdistill"


def test_every_package_folder_has_an_init() -> None:
    """setuptools' find_packages skips folders without __init__.py: a wheel would lack them."""
    folders = {p.parent for p in SRC.rglob("*.py")}
    missing = sorted(str(f.relative_to(SRC)) for f in folders if not (f / "__init__.py").exists())
    assert missing == []


def test_import_has_no_global_side_effects() -> None:
    code = (
        "import os, torch; threads = torch.get_num_threads(); env = dict(os.environ); "
        "det = torch.are_deterministic_algorithms_enabled(); import crossdistill; "
        "assert torch.get_num_threads() == threads; assert dict(os.environ) == env; "
        "assert torch.are_deterministic_algorithms_enabled() == det; "
        "import sys; assert 'sentence_transformers' not in sys.modules; print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE",)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
