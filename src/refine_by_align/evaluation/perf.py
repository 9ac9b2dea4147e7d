"""``refine-by-align benchmark``: every stage's speed against this machine's measured matmul ceiling.

Each figure is the median of several runs after a warm-up, measured in one process so that
ratios hold on a noisy host. JSON keys: ``ceiling.fp32_gflops``, ``ceiling.bf16_gflops`` and per
config ``<config>.refine_512_s``, ``.align_s``, ``.step_s``, ``.step_nocfg_s``, ``.encode_s``,
``.bench_case_s``, ``.unet_gflop``, ``.unet_fraction_of_ceiling``, ``.peak_rss_mb``, ``.dtype``.
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


def _median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_ceiling(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n matmul in ``dtype`` on this machine, now."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    with torch.inference_mode():
        t = _median_time(lambda: a @ b, repeats=repeats, warmup=2)
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


def benchmark_config(name: str, repeats: int = 3, bench_cases: str | None = None) -> dict:
    """Times of every stage of one config (a preset name or a model folder)."""
    from ..pipelines.pipeline import RefineByAlignPipeline

    pipe = RefineByAlignPipeline.from_pretrained(name)
    pipe.set_progress_bar_config(disable=True)
    model = pipe.model
    cfg = model.cfg
    image, mask, reference = _example_inputs()
    res: dict = {"dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "random_weights": pipe.random_weights}
    p = pipe.prepare(image, mask, reference)
    crop, cmask = pipe.crop_tensors(p)
    ref_t = pipe.reference_tensor(p.reference, p.reference_box)
    with torch.inference_mode():
        res["encode_s"] = _median_time(lambda: model.encode_reference(ref_t), repeats)
        res["align_s"] = _median_time(lambda: pipe.align(image, mask, reference), repeats)
        latents = model.to_latent(crop)
        masked = model.to_latent(crop * (1 - cmask))
        lmask = model.latent_mask(cmask)
        ctx = model.encode_reference(ref_t)
        t = torch.tensor([500])
        ctx2 = torch.cat([model.reference_encoder.unconditional(1), ctx])
        res["step_nocfg_s"] = _median_time(lambda: model(latents, t, masked, lmask, ctx), repeats)
        res["step_s"] = _median_time(
            lambda: model(torch.cat([latents] * 2), t.expand(2), masked.expand(2, -1, -1, -1), lmask.expand(2, -1, -1, -1), ctx2),
            repeats,
        )
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.cat([latents, masked, lmask], dim=1)
        with FlopCounterMode(display=False) as fc:
            model.unet(x, t, encoder_hidden_states=ctx)
        res["unet_gflop"] = fc.get_total_flops() / 1e9
        unet_s = _median_time(lambda: model.unet(x, t, encoder_hidden_states=ctx), repeats)
        res["unet_forward_s"] = unet_s
        res["unet_gflops_achieved"] = res["unet_gflop"] / unet_s
        res["refine_512_s"] = _median_time(lambda: pipe(image, mask, reference, seed=0), max(1, repeats - 1))
    if bench_cases:
        from .cases import load_cases
        from .methods import RefineByAlignMethod

        case = load_cases(bench_cases, limit=1)[0]
        method = RefineByAlignMethod(pipe)
        res["bench_case_s"] = _median_time(lambda: method(case), max(1, repeats - 1))
    res["steps"] = cfg.default_steps
    res["peak_rss_mb"] = _peak_rss_mb()
    return res


def run_benchmark(configs: list[str], output: str | Path, repeats: int = 3, bench_cases: str | None = None) -> dict:
    torch.manual_seed(0)
    out: dict = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "ceiling": {"fp32_gflops": matmul_ceiling(torch.float32), "bf16_gflops": matmul_ceiling(torch.bfloat16)},
    }
    for name in configs:
        r = benchmark_config(name, repeats, bench_cases)
        key = "bf16_gflops" if r["dtype"] == "bfloat16" else "fp32_gflops"
        r["unet_fraction_of_ceiling"] = r["unet_gflops_achieved"] / out["ceiling"][key]
        out[Path(name).name if Path(name).exists() else name] = r
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(out, indent=2))
    return out
