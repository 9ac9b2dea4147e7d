"""The matmul ceiling every fraction of the benchmark is taken of (not a timed test)."""

import torch

from refine_by_align.perf.ceiling import matmul_ceiling


def test_matmul_ceiling_is_positive():
    assert matmul_ceiling(torch.float32, n=128, repeats=2) > 0


def test_matmul_ceiling_shrinks_the_product_where_one_would_take_long(monkeypatch):
    """On a CPU the ceiling's product is 2048 x 2048 unless a 512 probe says one would take over
    max_product_s (bf16 without native instructions: ~0.2 s at 512, over a minute at 2048); then it halves
    until it fits, down to 512. The GFLOP/s returned are those of the size timed."""
    from refine_by_align.perf import ceiling

    timed_sizes = []

    def fake_median(fn, repeats=5, warmup=1, device=None):
        return 1.0  # one second a product: GFLOP/s = 2 n^3 / 1e9

    monkeypatch.setattr(ceiling, "median_time", fake_median)
    monkeypatch.setattr(ceiling.torch, "randn", lambda n, m, device=None: timed_sizes.append(n) or torch.zeros(1))
    for probe, n in ((0.2, 512), (0.05, 1024), (0.01, 1024), (1e-4, 2048)):
        monkeypatch.setattr(ceiling, "_product_time", lambda dtype, size, device: probe)
        timed_sizes.clear()
        assert ceiling.matmul_ceiling(torch.bfloat16) == 2 * n**3 / 1e9 and timed_sizes == [n, n], (probe, timed_sizes)
    assert ceiling.matmul_ceiling(torch.float32, n=300) == 2 * 300**3 / 1e9  # a given n is kept


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    """bf16 counts as native on a CPU with AMX or AVX-512 BF16, not on one with AVX2 only (where it
    is emulated), and cpu_name names the instruction set it found."""
    from refine_by_align.perf import ceiling

    for flags, native, isa in ((["avx2", "amx_bf16"], True, "AMX"), (["avx512f", "avx512_bf16"], True, "AVX-512 bf16"), (["avx2", "fma"], False, None)):
        monkeypatch.setattr(ceiling, "_cpu_info", lambda: ("Some CPU", flags))
        assert ceiling.native_bf16("cpu") is native
        assert ceiling.cpu_name() == (f"Some CPU, {isa}" if isa else "Some CPU")
