"""``seed_everything``: deterministic kernels on (warnings only), without importing
``torch._inductor`` — 2 s at the start of every command that never compiles."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys, torch
from crossdistill.train.runtime import seed_everything
seed_everything(3)
assert torch.are_deterministic_algorithms_enabled()
assert torch.is_deterministic_algorithms_warn_only_enabled()
assert "torch._inductor" not in sys.modules, "the inductor was imported"
assert torch.initial_seed() == 3
print("ok")
"""


def test_seeding_turns_on_deterministic_kernels_without_the_inductor() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
