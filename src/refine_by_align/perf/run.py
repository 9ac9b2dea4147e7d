"""``refine-by-align benchmark``: every stage's speed against this machine's measured matmul ceiling.

Each figure is the median of several runs after a warm-up, measured in one process so that
ratios hold on a noisy host. JSON keys: ``ceiling.fp32_gflops``, ``ceiling.bf16_gflops`` and per
config ``<config>.refine_512_s``, ``.align_s`` (dense), ``.align_attention_s`` (Algorithm 1),
``.align_example_s`` / ``.refine_example_s`` (dense, on the shipped ``badge`` example), ``.step_s``, ``.step_nocfg_s``, ``.encode_s``,
``.bench_case_s``, ``.unet_gflop``, ``.unet_fraction_of_ceiling``, ``.peak_rss_mb``, ``.dtype``
(and ``.peak_gpu_mb`` on a GPU). On a CPU, ``<config>.unet_breakdown`` says where a U-Net forward's
time goes: per op class (conv, linear, attention, other, and the framework overhead between ops)
its seconds, GFLOP, GFLOP/s and fraction of the ceiling, and ``unet_fraction_bound``, the fraction
the forward would reach if its convolutions and linear layers ran at the ceiling while attention,
the other ops and the overhead took the time they took. The device is picked automatically (a visible CUDA GPU, else the
CPU) or named with ``device``; the ceiling is measured on the same device.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["matmul_ceiling", "benchmark_config", "run_benchmark", "plot_breakdown", "attention_sweep", "unet_flops", "time_by_op_class", "breakdown"]


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, repeats: int = 5, warmup: int = 1, device: torch.device | None = None) -> float:
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


def matmul_ceiling(dtype: torch.dtype, n: int | None = None, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """GFLOP/s of an n x n matmul in ``dtype`` on ``device``, now (n: 2048 on a CPU, 8192 on a GPU)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with torch.inference_mode():
        t = _median_time(lambda: a @ b, repeats=repeats, warmup=2, device=device)
    return 2 * n**3 / t / 1e9


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
            return 1e3 * _median_time(fn, repeats=repeats, warmup=2)

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


_CLASS_COLORS = {"conv": "#4c72b0", "linear": "#55a868", "attention": "#c44e52", "other": "#8172b2", "overhead": "#bbbbbb"}


def plot_breakdown(result: dict, path: str | Path) -> Path | None:
    """One bar per config with a ``unet_breakdown``: the U-Net forward's time by op class (shares),
    labelled with the forward's seconds, its fraction of the ceiling and the bound. None if no
    config has a breakdown (on a GPU)."""
    rows = [(name, r) for name, r in result.items() if isinstance(r, dict) and "unet_breakdown" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.8 * len(rows)))
    for i, (name, r) in enumerate(rows):
        left = 0.0
        for k in (*OP_CLASSES, "overhead"):
            share = 100 * r["unet_breakdown"][k]["share"]
            ax.barh(i, share, left=left, color=_CLASS_COLORS[k], label=k if i == 0 else None)
            if share >= 6:
                ax.text(left + share / 2, i, f"{share:.0f}%", ha="center", va="center", fontsize=8, color="white")
            left += share
        ax.text(
            101, i, f"{r['unet_forward_s']:.3f} s; {100 * r['unet_fraction_of_ceiling']:.0f}% of ceiling (bound {100 * r['unet_breakdown']['unet_fraction_bound']:.0f}%)", va="center", fontsize=8
        )
    ax.set_yticks(list(range(len(rows))), [f"{name.strip()} ({r['dtype']}{', compiled' if r.get('compiled') else ''})" for name, r in rows])
    ax.set_xlim(0, 150)
    ax.set_xticks([0, 25, 50, 75, 100])
    ax.set_xlabel("share of one U-Net forward at batch 1 (%)")
    ax.invert_yaxis()
    ax.legend(ncol=5, loc="lower center", bbox_to_anchor=(0.35, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _cpu_name() -> str:
    """'Intel(R) Xeon(R) Processor, AMX' from /proc/cpuinfo where there is one, else the platform."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), platform.machine())
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    isa = "AMX" if "amx_bf16" in flags else "AVX-512 bf16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else ""
    return f"{name}, {isa}" if isa else name


def _say(msg: str) -> None:
    """A progress line on stderr (a benchmark of ``paper`` runs for many minutes)."""
    print(f"benchmark: {msg}", file=sys.stderr, flush=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _example_inputs(size: int = 512, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([(xx * 255 // size), (yy * 255 // size), rng.integers(0, 255, (size, size))], -1).astype(np.uint8)
    mask = np.zeros((size, size), bool)
    mask[size // 3 : size // 3 + size // 8, size // 3 : size // 3 + size // 6] = True
    reference = Image.fromarray(image[::-1].copy())
    return Image.fromarray(image), mask, reference


def _shipped_example(name: str = "badge"):
    """(image, mask, reference, reference mask) of a shipped demo example, or None."""
    from ..demo.examples import EXAMPLES_DIR
    from ..io import load_mask

    d = EXAMPLES_DIR / name
    if not (d / "image.png").exists():
        return None
    return Image.open(d / "image.png").convert("RGB"), load_mask(d / "mask.png"), Image.open(d / "reference.png").convert("RGB"), load_mask(d / "reference_mask.png")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _resolve_dtype(name: str, dtype: str) -> str:
    """``auto``: bf16 for the paper-size config (matmul-bound: bf16 is ~4x fp32 here), fp32 for
    small models (overhead-bound: casting costs more than it saves)."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype '{dtype}': choose auto, fp32 or bf16")
        return dtype
    return "bf16" if Path(name).name == "paper" else "fp32"


def benchmark_config(
    name: str, repeats: int = 3, bench_cases: str | None = None, dtype: str = "auto", compile: bool | str = False, device: str = "auto"
) -> dict:
    """Times of every stage of one config (a preset name or a model folder) on ``device``.
    ``compile``: False, True (torch.compile's default mode) or a mode name such as "max-autotune"."""
    from ..loading import load_pipeline
    from ..pipelines.pipeline import resolve_device

    dev = resolve_device(device)
    dtype = _resolve_dtype(name, dtype)
    _say(f"{name}: loading ({dtype}, {dev})")
    pipe = load_pipeline(name, device=dev, dtype=DTYPES[dtype])

    def timed(fn, repeats: int) -> float:  # on this config's device
        return _median_time(fn, repeats, warmup=1, device=dev)

    pipe.set_progress_bar_config(disable=True)
    model = pipe.model
    cfg = model.cfg
    image, mask, reference = _example_inputs()
    res: dict = {
        "dtype": str(model.dtype).replace("torch.", ""),
        "device": str(dev),
        "random_weights": pipe.random_weights,
        "compiled": False,
    }
    p = pipe.prepare(image, mask, reference)
    ref_t = pipe.reference_tensor(p.reference, p.reference_box)
    with torch.no_grad():  # as the pipeline runs: dynamo compiles separately for inference mode
        _say(f"{name}: reference encoding and the alignment stage")
        res["encode_s"] = timed(lambda: model.encode_reference(ref_t), repeats)
        res["align_s"] = timed(lambda: pipe.align(image, mask, reference), repeats)
        res["align_attention_s"] = timed(lambda: pipe.align(image, mask, reference, method="attention"), repeats)
        # the shipped rendered example (a photo-like object with texture the matchers can use): the
        # dense alignment's cost depends on the content, which the synthetic 512 px input lacks
        ex = _shipped_example()
        if ex is not None:
            res["align_example_s"] = timed(lambda: pipe.align(*ex), repeats)
            res["refine_example_s"] = timed(lambda: pipe(*ex, seed=0), repeats)
        inputs = pipe.crop_inputs(p)
        latents, masked, lmask = inputs.sample, inputs.masked, inputs.lmask  # (1, C, h, w), ..., (1, 1, h, w)
        ctx = model.encode_reference(ref_t)
        t = torch.tensor([500], device=dev)
        ctx2 = torch.cat([model.reference_encoder.unconditional(1), ctx])
        x = torch.cat([latents, masked, lmask], dim=1).to(model.dtype)

        def step(context):  # one denoising step on the batch of ``context`` (B, T, C), as the sampler runs it
            b = context.shape[0]
            return pipe._predict(torch.cat([latents] * b), t.expand(b), masked.expand(b, -1, -1, -1), lmask.expand(b, -1, -1, -1), context)

        def guided_step():  # with guidance: the [uncond, cond] batch in one forward
            return step(ctx2)

        if dtype != "fp32":  # numerical check of the reduced precision against fp32, same weights
            ref32 = model.unet.float()(x.float(), t, encoder_hidden_states=ctx.float()).sample
            torch.nn.Module.to(model, DTYPES[dtype])  # (ModelMixin.to's float32-module warning does not apply)
            low = model.unet(x, t, encoder_hidden_states=ctx).sample.float()
            res["unet_rel_error_vs_fp32"] = float((low - ref32).norm() / ref32.norm().clamp_min(1e-12))
        _say(f"{name}: U-Net FLOPs and forward")
        flops = unet_flops(lambda: model.unet(x, t, encoder_hidden_states=ctx))
        res["unet_gflop"] = flops["total"]
        res["unet_gflop_by_class"] = {k: flops[k] for k in OP_CLASSES}
        unet = model.unet  # the U-Net the forward figures are of: the compiled one where it compiled
        unet_s = timed(lambda: unet(x, t, encoder_hidden_states=ctx), repeats)
        res["unet_forward_s"] = unet_s
        mode = "default" if compile is True else compile
        if compile and pipe.enable_compile(mode=None if mode == "default" else mode):
            _say(f"{name}: compiling (torch.compile; paper on a 2-core CPU: about 2 minutes)")
            res["compile_mode"] = mode
            t0 = time.perf_counter()
            pipe._predict(latents, t, masked, lmask, ctx)  # compiles (batch 1)
            guided_step()
            if model.vae is not None:  # the autoencoder's parts compile at the shapes a refine uses
                pipe.crop_inputs(p)  # encode: the crop and its hole-filled copy
                z = torch.cat([latents] * cfg.default_samples).to(model.dtype)
                pipe._compiled_or_eager("decode", lambda fn: model.from_latent(z, decode=fn))
            res["compile_s"] = time.perf_counter() - t0
            res["compiled_parts"] = sorted(k for k, fn in pipe._compiled.items() if fn is not None)
            res["compiled"] = pipe._compiled.get("unet") is not None
            if res["compiled"]:
                unet = pipe._compiled["unet"]
                res["unet_forward_eager_s"] = unet_s
                unet_s = timed(lambda: unet(x, t, encoder_hidden_states=ctx), repeats)
                res["unet_forward_s"] = unet_s
        res["unet_gflops_achieved"] = res["unet_gflop"] / unet_s
        if dev.type == "cpu":  # where the forward's time goes (module doc); GPU kernels are named otherwise
            res["unet_time_by_class_s"] = time_by_op_class(lambda: unet(x, t, encoder_hidden_states=ctx))
        _say(f"{name}: denoising steps")
        res["step_nocfg_s"] = timed(lambda: pipe._predict(latents, t, masked, lmask, ctx), repeats)
        res["step_s"] = timed(guided_step, repeats)
        # one step at the batch a refine runs: K samples, twice over with guidance ([uncond, cond])
        k = cfg.default_samples
        ctx_k = torch.cat([model.reference_encoder.unconditional(k), ctx.expand(k, -1, -1)]) if cfg.default_guidance != 1.0 else ctx.expand(k, -1, -1)
        res["unet_refine_batch"] = {"batch": ctx_k.shape[0], "s": timed(lambda: step(ctx_k), repeats)}
        timings = []

        def refine():
            timings.append(pipe(image, mask, reference, seed=0).timings)

        _say(f"{name}: whole refines of a 512x512 image ({max(1, repeats - 1) + 1} runs)")
        res["refine_512_s"] = timed(refine, max(1, repeats - 1))
        res["refine_512_parts_s"] = {k: statistics.median(tm[k] for tm in timings[1:] or timings) for k in timings[0]}
    if bench_cases:
        _say(f"{name}: a bench case")
        from .cases import load_cases
        from .methods import RefineByAlignMethod

        case = load_cases(bench_cases, limit=1)[0]
        method = RefineByAlignMethod(pipe)
        res["bench_case_s"] = timed(lambda: method(case), max(1, repeats - 1))
    res["steps"] = cfg.default_steps
    res["guidance"] = cfg.default_guidance
    res["peak_rss_mb"] = _peak_rss_mb()
    if dev.type == "cuda":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return res


def _benchmark_in_child(args: tuple) -> dict:
    torch.set_num_threads(args[-1])
    return benchmark_config(*args[:-1])


def run_benchmark(
    configs: list[str],
    output: str | Path,
    repeats: int = 3,
    bench_cases: str | None = None,
    dtype: str = "auto",
    compile: bool | str = False,
    device: str = "auto",
    attention: bool = False,
) -> dict:
    """Ceiling, each config in its own process (so that peak RSS is that config's own), ceiling
    again; with ``attention``, also :func:`attention_sweep` (CPU) under ``"attention_sweep"``."""
    import multiprocessing

    from ..pipelines.pipeline import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(0)
    machine = f"{_cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if dev.type == "cuda":
        machine += f", GPU {torch.cuda.get_device_name(dev)}"
    out: dict = {
        "date": date.today().isoformat(),
        "machine": machine,
        "device": str(dev),
    }

    def ceiling() -> dict[str, float]:
        return {"fp32_gflops": matmul_ceiling(torch.float32, device=dev), "bf16_gflops": matmul_ceiling(torch.bfloat16, device=dev)}

    # The host's speed drifts (a shared VM): the ceiling is measured before and after the configs
    # and the higher of the two is used, so that a slow spell cannot inflate the fractions.
    _say("matmul ceiling")
    runs = [ceiling()]
    results = {}
    ctx = multiprocessing.get_context("spawn")
    for name in configs:
        with ctx.Pool(1) as pool:
            results[name] = pool.apply(_benchmark_in_child, ((name, repeats, bench_cases, dtype, compile, str(dev), torch.get_num_threads()),))
    _say("matmul ceiling again")
    runs.append(ceiling())
    out["ceiling"] = {k: max(r[k] for r in runs) for k in runs[0]}
    out["ceiling_runs"] = runs
    if attention and dev.type == "cpu":
        _say("attention sweep")
        out["attention_sweep"] = attention_sweep()
    for name, r in results.items():
        key = "bf16_gflops" if r["dtype"] == "bfloat16" else "fp32_gflops"
        peak = out["ceiling"][key]
        r["unet_fraction_of_ceiling"] = r["unet_gflops_achieved"] / peak
        rb = r["unet_refine_batch"]
        rb["fraction_of_ceiling"] = rb["batch"] * r["unet_gflop"] / rb["s"] / peak
        if "unet_time_by_class_s" in r:
            flops = {**r["unet_gflop_by_class"], "total": r["unet_gflop"]}
            r["unet_breakdown"] = breakdown(flops, r["unet_time_by_class_s"], r["unet_forward_s"], peak)
        out[Path(name).name if Path(name).exists() else name] = r
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(out, indent=2))
    plot_breakdown(out, Path(output).with_suffix(".png"))
    return out
