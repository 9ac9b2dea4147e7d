"""``refine-by-align benchmark``: every stage's speed against this machine's measured matmul ceiling.

Each figure is the median of several runs after a warm-up, measured in one process so that
ratios hold on a noisy host. JSON keys: ``ceiling.fp32_gflops``, ``ceiling.bf16_gflops`` and per
config ``<config>.refine_512_s``, ``.align_s``, ``.step_s``, ``.step_nocfg_s``, ``.encode_s``,
``.bench_case_s``, ``.unet_gflop``, ``.unet_fraction_of_ceiling``, ``.peak_rss_mb``, ``.dtype``
(and ``.peak_gpu_mb`` on a GPU). The device is picked automatically (a visible CUDA GPU, else the
CPU) or named with ``device``; the ceiling is measured on the same device.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["matmul_ceiling", "benchmark_config", "run_benchmark"]


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
    from ..pipelines.pipeline import RefineByAlignPipeline, resolve_device

    dev = resolve_device(device)
    dtype = _resolve_dtype(name, dtype)
    pipe = RefineByAlignPipeline.from_pretrained(name, torch_dtype=DTYPES[dtype], device=dev)

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
        res["encode_s"] = timed(lambda: model.encode_reference(ref_t), repeats)
        res["align_s"] = timed(lambda: pipe.align(image, mask, reference), repeats)
        inputs = pipe.crop_inputs(p)
        latents, masked, lmask = inputs.sample, inputs.masked, inputs.lmask  # (1, C, h, w), ..., (1, 1, h, w)
        ctx = model.encode_reference(ref_t)
        t = torch.tensor([500], device=dev)
        ctx2 = torch.cat([model.reference_encoder.unconditional(1), ctx])
        x = torch.cat([latents, masked, lmask], dim=1).to(model.dtype)

        def guided_step():  # one denoising step with guidance: the [uncond, cond] batch in one forward
            return pipe._predict(torch.cat([latents] * 2), t.expand(2), masked.expand(2, -1, -1, -1), lmask.expand(2, -1, -1, -1), ctx2)

        if dtype != "fp32":  # numerical check of the reduced precision against fp32, same weights
            ref32 = model.unet.float()(x.float(), t, encoder_hidden_states=ctx.float()).sample
            torch.nn.Module.to(model, DTYPES[dtype])  # (ModelMixin.to's float32-module warning does not apply)
            low = model.unet(x, t, encoder_hidden_states=ctx).sample.float()
            res["unet_rel_error_vs_fp32"] = float((low - ref32).norm() / ref32.norm().clamp_min(1e-12))
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            model.unet(x, t, encoder_hidden_states=ctx)
        res["unet_gflop"] = fc.get_total_flops() / 1e9
        unet_s = timed(lambda: model.unet(x, t, encoder_hidden_states=ctx), repeats)
        res["unet_forward_s"] = unet_s
        mode = "default" if compile is True else compile
        if compile and pipe.enable_compile(mode=None if mode == "default" else mode):
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
                cu = pipe._compiled["unet"]
                res["unet_forward_eager_s"] = unet_s
                unet_s = timed(lambda: cu(x, t, encoder_hidden_states=ctx), repeats)
                res["unet_forward_s"] = unet_s
        res["unet_gflops_achieved"] = res["unet_gflop"] / unet_s
        res["step_nocfg_s"] = timed(lambda: pipe._predict(latents, t, masked, lmask, ctx), repeats)
        res["step_s"] = timed(guided_step, repeats)
        timings = []

        def refine():
            timings.append(pipe(image, mask, reference, seed=0).timings)

        res["refine_512_s"] = timed(refine, max(1, repeats - 1))
        res["refine_512_parts_s"] = {k: statistics.median(tm[k] for tm in timings[1:] or timings) for k in timings[0]}
    if bench_cases:
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
) -> dict:
    """Ceiling, then each config in its own process (so that peak RSS is that config's own)."""
    import multiprocessing

    from ..pipelines.pipeline import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(0)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if dev.type == "cuda":
        machine += f", GPU {torch.cuda.get_device_name(dev)}"
    out: dict = {
        "date": date.today().isoformat(),
        "machine": machine,
        "device": str(dev),
        "ceiling": {
            "fp32_gflops": matmul_ceiling(torch.float32, device=dev),
            "bf16_gflops": matmul_ceiling(torch.bfloat16, device=dev),
        },
    }
    ctx = multiprocessing.get_context("spawn")
    for name in configs:
        with ctx.Pool(1) as pool:
            r = pool.apply(_benchmark_in_child, ((name, repeats, bench_cases, dtype, compile, str(dev), torch.get_num_threads()),))
        key = "bf16_gflops" if r["dtype"] == "bfloat16" else "fp32_gflops"
        r["unet_fraction_of_ceiling"] = r["unet_gflops_achieved"] / out["ceiling"][key]
        out[Path(name).name if Path(name).exists() else name] = r
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(out, indent=2))
    return out
