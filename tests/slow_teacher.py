"""Teachers that hold a child process at a known point.

``slow_cnn``: the digits CNN sleeping 30 ms per batch, slow enough to be killed mid-write
(tests/test_store.py and benchmarks/faults.py kill ``crossdistill cache`` while it runs).
``gated_cnn``: the digits CNN that waits, from its third batch on (the first two are the checks
on preview batches of the training and the evaluation data, before the run directory exists),
until the file named by
``$CROSSDISTILL_TEST_GATE`` exists (tests/test_runs.py holds a run open that way).
Child processes import them as ``slow_teacher:...`` with this folder on ``PYTHONPATH``.
"""

import os
import time
from pathlib import Path

from crossdistill.models.zoo.cnn import SmallCNN


class Slow(SmallCNN):
    def forward(self, x):
        time.sleep(0.03)
        return super().forward(x)


def slow_cnn(**params):
    return Slow(**params)


class Gated(SmallCNN):
    calls = 0

    def forward(self, x):
        self.calls += 1
        gate = Path(os.environ["CROSSDISTILL_TEST_GATE"])
        deadline = time.monotonic() + 300
        while self.calls > 2 and not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return super().forward(x)


def gated_cnn(**params):
    return Gated(**params)
