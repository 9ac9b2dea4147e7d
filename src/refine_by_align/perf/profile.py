"""Where a U-Net forward's time goes: its FLOPs by operator class (attention on a CPU included),
each class's profiled time, the breakdown against the ceiling with the bound it implies, and a
sweep of PyTorch's attention by head size."""

from __future__ import annotations

import time

import torch

from .ceiling import median_time

__all__ = ["OP_CLASSES", "op_class", "unet_flops", "time_by_op_class", "breakdown", "attention_sweep"]


OP_CLASSES = ("conv", "linear", "attention", "other")
_CONVS = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "linear_pointwise", "mkldnn_linear", "mkl_linear"}
# profiler events of torch.compile's own machinery (guards, wrappers), not of the model's kernels;
# the generated kernels themselves run inside "## Call CompiledFxGraph ##" and count as "other"
_COMPILE_MACHINERY = ("torchdynamo", "torch-compiled region", "aotdispatcher", "pregraph bytecode")


def op_class(name: str) -> str:
    """The class of an operator, from its profiler name (``aten::addmm``,
    ``mkldnn::_convolution_pointwise``) or its flop-counter name (``aten.convolution``):
    one of :data:`OP_CLASSES`, or ``"overhead"`` for torch.compile's own machinery."""
    if name.lower().startswith(_COMPILE_MACHINERY):
        return "overhead"
    base = name.replace("::", ".").split(".")[-1].strip("_ ")
    if "attention" in base:
        return "attention"
    if "convolution" in base or base in _CONVS:
        return "conv"
    if base in _MATMULS:
        return "linear"
    return "other"


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def unet_flops(forward) -> dict[str, float]:
    """GFLOP of one call of ``forward`` by op class (:data:`OP_CLASSES`) and in ``"total"``, counted
    by torch.utils.flop_counter. Its registry has the GPU attention kernels but not PyTorch's CPU
    flash-attention op, which would count attention as 0 FLOPs on a CPU (for ``paper`` at 64x64:
    134 of 819 GFLOP); that op is counted here with the same formula."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_attention_flops
    with FlopCounterMode(display=False, custom_mapping=custom) as fc:
        forward()
    out = dict.fromkeys(OP_CLASSES, 0.0)
    for op, n in fc.get_flop_counts().get("Global", {}).items():
        out[op_class(str(op))] += n / 1e9
    out["total"] = sum(out[k] for k in OP_CLASSES)
    return out


def time_by_op_class(forward) -> dict[str, float]:
    """Seconds of one profiled call of ``forward`` (CPU) by op class (:data:`OP_CLASSES`), from
    each operator's self time, and ``"wall"``, the profiled call's wall time (longer than an
    unprofiled call by the profiler's own cost). torch.compile's own machinery is left out: it is
    overhead, which :func:`breakdown` takes as what the operators leave of a forward."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        forward()
        wall = time.perf_counter() - t0
    out = dict.fromkeys(OP_CLASSES, 0.0)
    for ev in prof.key_averages():
        cls = op_class(ev.key)
        if cls in out:
            out[cls] += ev.self_cpu_time_total / 1e6
    out["wall"] = wall
    return out


def breakdown(flops: dict[str, float], seconds: dict[str, float], forward_s: float, ceiling_gflops: float) -> dict:
    """Per op class: seconds, share of the median unprofiled forward ``forward_s``, GFLOP, GFLOP/s
    and fraction of ``ceiling_gflops``; and ``unet_fraction_bound`` (module doc). The operators
    keep their profiled self times; ``"overhead"`` is what is left of ``forward_s`` (Python,
    dispatch, torch.compile's guards), so the profiler's own cost is not counted in it. Where the
    operators add up to more than ``forward_s`` (a noisy host), they are scaled down to it."""
    ops = sum(seconds[k] for k in OP_CLASSES)
    scale = min(1.0, forward_s / ops) if ops > 0 else 1.0
    timed = {k: seconds[k] * scale for k in OP_CLASSES}
    timed["overhead"] = forward_s - sum(timed.values())
    out: dict = {}
    for k in (*OP_CLASSES, "overhead"):
        s = timed[k]
        g = flops.get(k, 0.0)
        out[k] = {"s": s, "share": s / forward_s, "gflop": g}
        if g > 0 and s > 0:
            out[k]["gflops"] = g / s
            out[k]["fraction_of_ceiling"] = g / s / ceiling_gflops
    rest = sum(out[k]["s"] for k in ("attention", "other", "overhead"))
    ideal = rest + (flops["conv"] + flops["linear"]) / ceiling_gflops
    out["unet_fraction_bound"] = flops["total"] / ideal / ceiling_gflops
    return out


def attention_sweep(
    tokens: int = 4096, width: int = 320, head_sizes: tuple[int, ...] = (32, 40, 48, 64, 80, 128), dtype: torch.dtype = torch.bfloat16, repeats: int = 5
) -> dict:
    """PyTorch's scaled_dot_product_attention on this machine: one self-attention of ``tokens``
    tokens, 8 heads, at each head size (``by_head_size``: ms and GFLOP/s); and the ``paper`` U-Net's
    largest layer (``width`` = 320 channels as 8 heads of 40, batch 2 as in a guided step) as it
    is and with its heads zero-padded to 48 and 64 (``padded``: ms, the pad and slice copies
    included). The padded results equal the plain ones (the scale stays 1/sqrt(40))."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)

    def ms(fn) -> float:
        with torch.inference_mode():
            return 1e3 * median_time(fn, repeats=repeats, warmup=2)

    out: dict = {"tokens": tokens, "heads": 8, "dtype": str(dtype).replace("torch.", ""), "by_head_size": {}}
    for d in head_sizes:
        q, k, v = (torch.randn(1, 8, tokens, d, generator=g).to(dtype) for _ in range(3))
        t = ms(lambda: F.scaled_dot_product_attention(q, k, v))
        out["by_head_size"][d] = {"ms": t, "gflops": 4 * 8 * tokens * tokens * d / (t / 1e3) / 1e9}
    heads, d = 8, width // 8
    q, k, v = (torch.randn(2, tokens, width, generator=g).to(dtype) for _ in range(3))  # (B, N, heads * d)

    def attend(pad: int) -> torch.Tensor:
        split = [F.pad(x.view(2, tokens, heads, d), (0, pad - d)).transpose(1, 2) for x in (q, k, v)]  # (B, heads, N, pad)
        o = F.scaled_dot_product_attention(*split, scale=d**-0.5)[..., :d]
        return o.transpose(1, 2).reshape(2, tokens, width)

    out["padded"] = {p: {"ms": ms(lambda p=p: attend(p))} for p in (d, 48, 64) if p >= d}
    with torch.inference_mode():
        ref = attend(d)
        out["padded_max_abs_diff"] = max(float((attend(p) - ref).abs().max()) for p in out["padded"])
    return out
