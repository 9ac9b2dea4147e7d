"""How many threads a CPU-bound step may use (OpenCV, SciPy and SciPy's sparse solvers release
Python's lock, so side-by-side threads run on separate cores)."""

from __future__ import annotations

import os

__all__ = ["worker_threads"]


def worker_threads() -> int:
    """Threads a CPU-bound step may use: the cores this process may run on (affinity, so a
    container's or a batch shard's limit counts), at most torch's thread setting."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, torch.get_num_threads()))
