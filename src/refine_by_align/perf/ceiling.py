"""What this machine can do and what a run used: the matmul ceiling every fraction is taken of,
the median wall time of a call (GPU work waited for), the CPU's name, the peak resident memory."""

from __future__ import annotations

import platform
import resource
import statistics
import time

import torch

from ..provenance import cpu_info

__all__ = ["median_time", "matmul_ceiling", "cpu_name", "native_bf16", "peak_rss_mb"]


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, repeats: int = 5, warmup: int = 1, device: torch.device | None = None) -> float:
    """Median wall time of ``fn`` (GPU work is waited for: the clock stops after a synchronize)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_ceiling(dtype: torch.dtype, n: int | None = None, repeats: int = 5, device: str | torch.device = "cpu", max_product_s: float = 0.5) -> float:
    """GFLOP/s of an n x n matmul in ``dtype`` on ``device``, now. n: 8192 on a GPU; on a CPU 2048,
    or less where one product would take over ``max_product_s`` (probed on a 512 x 512 product):
    bf16 on a CPU without native bf16 instructions (AVX2 only) was measured at about 1 GFLOP/s on
    512 products and slower on larger ones: the ceiling's seven 2048 products, twice a benchmark,
    ran for over 7 minutes before they were stopped."""
    device = torch.device(device)
    if n is None:
        n = 8192 if device.type == "cuda" else 2048
        if device.type == "cpu":
            probe = _product_time(dtype, 512, device)
            while n > 512 and probe * (n / 512) ** 3 > max_product_s:
                n //= 2
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with torch.inference_mode():
        t = median_time(lambda: a @ b, repeats=repeats, warmup=2, device=device)
    return 2 * n**3 / t / 1e9


def _product_time(dtype: torch.dtype, n: int, device: torch.device) -> float:
    """Seconds of one n x n product in ``dtype`` (after one warm-up product)."""
    a = torch.randn(n, n, device=device).to(dtype)
    with torch.inference_mode():
        return median_time(lambda: a @ a, repeats=1, warmup=1, device=device)


def _cpu_info() -> tuple[str, list[str]]:
    """(the CPU's model name, its instruction-set flags) (:func:`~refine_by_align.provenance.cpu_info`);
    the platform's name where /proc/cpuinfo gives none."""
    name, flags = cpu_info()
    return name or platform.processor() or platform.machine(), flags


def cpu_name() -> str:
    """'Intel(R) Xeon(R) Processor, AMX' from /proc/cpuinfo where there is one, else the platform."""
    name, flags = _cpu_info()
    isa = "AMX" if "amx_bf16" in flags else "AVX-512 bf16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else ""
    return f"{name}, {isa}" if isa else name


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 matmuls run natively on ``device``: a CUDA GPU that supports bf16, or a CPU
    with AMX or AVX-512 BF16. Elsewhere (AVX2 only) PyTorch emulates them at 1-2 GFLOP/s, about
    a hundredth of fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = _cpu_info()[1]
    return "amx_bf16" in flags or "avx512_bf16" in flags


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
