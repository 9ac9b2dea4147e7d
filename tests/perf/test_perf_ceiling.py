"""The matmul ceiling every fraction of the benchmark is taken of (not a timed test)."""

import torch

from refine_by_align.perf.ceiling import matmul_ceiling


def test_matmul_ceiling_is_positive():
    assert matmul_ceiling(torch.float32, n=128, repeats=2) > 0
