"""How many threads a CPU-bound step may use (OpenCV, SciPy and SciPy's sparse solvers release
Python's lock, so side-by-side threads run on separate cores)."""

from __future__ import annotations

import os
from contextlib import contextmanager

__all__ = ["side_by_side", "worker_threads", "torch_threads"]


def worker_threads() -> int:
    """Threads a CPU-bound step may use: the cores this process may run on (affinity, so a
    container's or a batch shard's limit counts), at most torch's thread setting."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, torch.get_num_threads()))


def side_by_side(work, jobs) -> list:
    """``[work(job) for job in jobs]``, the jobs run on up to :func:`worker_threads` threads where
    there are several of each (for steps whose work runs in OpenCV, SciPy or NumPy, which release
    Python's lock), the results in the jobs' order: the same results as one after another."""
    jobs = list(jobs)
    threads = min(len(jobs), worker_threads()) if len(jobs) > 1 else 1
    if threads < 2:
        return [work(job) for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(work, jobs))


@contextmanager
def torch_threads(n: int | None):
    """torch's operations on the calling thread run on ``n`` threads inside the block (None: as
    set). torch's setting is the calling thread's own (OpenMP's per-thread setting), so a step on
    one thread can run single-threaded beside another step on another thread, each on its own
    core, without changing the other's."""
    import torch

    before = torch.get_num_threads()
    if n is None or int(n) == before:
        yield
        return
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
