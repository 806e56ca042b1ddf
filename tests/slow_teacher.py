"""A teacher slow enough to be killed mid-write: the digits CNN sleeping 30 ms per batch.

Child processes import it as ``slow_teacher:slow_cnn`` with this folder on ``PYTHONPATH``
(tests/test_store.py and benchmarks/faults.py kill ``crossdistill cache`` while it runs).
"""

import time

from crossdistill.models.zoo.cnn import SmallCNN


class Slow(SmallCNN):
    def forward(self, x):
        time.sleep(0.03)
        return super().forward(x)


def slow_cnn(**params):
    return Slow(**params)
