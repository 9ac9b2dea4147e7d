"""``refine-by-align bench-speed``: every stage's speed against this machine's measured matmul ceiling.

Each figure is the median of several runs after a warm-up, measured in one process so that
ratios hold on a noisy host. JSON keys: ``ceiling.fp32_gflops``, ``ceiling.bf16_gflops`` and per
config ``<config>.refine_512_s``, ``.align_s`` (dense), ``.align_attention_s`` (Algorithm 1),
``.align_example_s`` / ``.refine_example_s`` (dense, on the shipped ``badge`` example, a new reference each
time), ``.align_example_warm_s`` (the same reference again: its matcher features remembered), ``.step_s``, ``.step_nocfg_s``, ``.encode_s``,
``.cases`` (with a case folder: each case refined once, with and without its reference mask:
``.cases.with_reference_mask.median_s`` / ``p90_s`` / ``max_s`` / ``under_target`` overall and
``.by_kind``, the stages' medians and every run), ``.unet_gflop``, ``.unet_fraction_of_ceiling``, ``.peak_rss_mb``, ``.dtype``
(and ``.peak_gpu_mb`` on a GPU). On a CPU, ``<config>.unet_breakdown`` says where a U-Net forward's
time goes: per op class (conv, linear, attention, other, and the framework overhead between ops)
its seconds, GFLOP, GFLOP/s and fraction of the ceiling, and ``unet_fraction_bound``, the fraction
the forward would reach if its convolutions and linear layers ran at the ceiling while attention,
the other ops and the overhead took the time they took. The device is picked automatically (a visible CUDA GPU, else the
CPU) or named with ``device``; the ceiling is measured on the same device.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..allocator import allocator_setting, keep_freed_memory, keeps_freed_memory
from ..io import InputError
from ..pipelines.pipeline import forget_remembered
from .ceiling import cpu_name, matmul_ceiling, median_time, native_bf16, peak_rss_mb
from .plot import plot_breakdown
from .profile import OP_CLASSES, attention_sweep, breakdown, time_by_op_class, unet_flops

__all__ = ["DTYPES", "benchmark_config", "run_benchmark", "check_configs", "format_results"]


def _say(msg: str) -> None:
    """A progress line on stderr (a benchmark of ``paper`` runs for many minutes)."""
    print(f"bench-speed: {msg}", file=sys.stderr, flush=True)


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


def _resolve_dtype(name: str, dtype: str, native: bool = True) -> str:
    """``auto``: bf16 for the paper-size config where the device runs bf16 natively (``native``,
    :func:`~.ceiling.native_bf16`; matmul-bound: bf16 is ~4x fp32 with AMX), fp32 for small models
    (overhead-bound: casting costs more than it saves) and on a CPU without native bf16 (AVX2
    only: bf16 is emulated at about a hundredth of fp32's speed)."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype '{dtype}': choose auto, fp32 or bf16")
        return dtype
    return "bf16" if Path(name).name == "paper" and native else "fp32"


@dataclass
class _StepInputs:
    """One denoising step's inputs on the example's zoom-in crop (batch 1) at t = 500."""

    latents: torch.Tensor  # (1, C, h, w)
    masked: torch.Tensor  # (1, C, h, w)
    lmask: torch.Tensor  # (1, 1, h, w)
    ctx: torch.Tensor  # (1, T, C) the reference tokens
    guided_ctx: torch.Tensor  # (2, T, C): [unconditional, ctx], the batch a guided step runs
    t: torch.Tensor  # (1,)
    x: torch.Tensor  # the U-Net's own input [latents, masked, mask] in the model's dtype

    @classmethod
    def of(cls, pipe, p, ref_t: torch.Tensor, dev: torch.device) -> _StepInputs:
        model = pipe.model
        inputs = pipe.crop_inputs(p)
        latents, masked, lmask = inputs.sample, inputs.masked, inputs.lmask
        ctx = model.encode_reference(ref_t)
        t = torch.tensor([500], device=dev)
        guided = torch.cat([model.reference_encoder.unconditional(1), ctx])
        return cls(latents, masked, lmask, ctx, guided, t, torch.cat([latents, masked, lmask], dim=1).to(model.dtype))

    def step(self, pipe, context: torch.Tensor):
        """One denoising step on the batch of ``context`` (B, T, C), as the sampler runs it."""
        b = context.shape[0]
        return pipe.step(
            torch.cat([self.latents] * b), self.t.expand(b), self.masked.expand(b, -1, -1, -1), self.lmask.expand(b, -1, -1, -1), context
        )

    def forward(self, unet):
        """One plain U-Net forward (batch 1, no guidance)."""
        return unet(self.x, self.t, encoder_hidden_states=self.ctx)


def _time_alignment(pipe, example, timed: Callable, repeats: int) -> dict:
    """The alignment stage: dense and Algorithm 1 on the synthetic input; on the shipped example
    (a photo-like object with texture the matchers can use: the dense alignment's cost depends on
    the content, which the synthetic 512 px input lacks) a new reference each time (its matcher
    features and estimated object computed anew) and the same reference again (remembered)."""
    image, mask, reference = example
    res = {
        "align_s": timed(lambda: (forget_remembered(), pipe.align(image, mask, reference)), repeats),
        "align_attention_s": timed(lambda: pipe.align(image, mask, reference, alignment="attention"), repeats),
    }
    ex = _shipped_example()
    if ex is not None:
        res["align_example_s"] = timed(lambda: (forget_remembered(), pipe.align(*ex)), repeats)
        res["refine_example_s"] = timed(lambda: (forget_remembered(), pipe(*ex, seed=0)), repeats)
        pipe.align(*ex)
        res["align_example_warm_s"] = timed(lambda: pipe.align(*ex), repeats)
    return res


def _reduced_precision_error(model, s: _StepInputs, dtype: str) -> float:
    """Relative error of the U-Net output in ``dtype`` against fp32, same weights (the model is
    cast to fp32 for the reference forward and back to ``dtype``)."""
    ref32 = model.unet.float()(s.x.float(), s.t, encoder_hidden_states=s.ctx.float()).sample
    torch.nn.Module.to(model, DTYPES[dtype])  # (ModelMixin.to's float32-module warning does not apply)
    low = model.unet(s.x, s.t, encoder_hidden_states=s.ctx).sample.float()
    return float((low - ref32).norm() / ref32.norm().clamp_min(1e-12))


def _compile(pipe, p, s: _StepInputs, name: str, mode: str, res: dict) -> dict:
    """Compile by running what a refine runs (a step at batch 1 and guided, the autoencoder's parts
    at a refine's shapes); records the mode, the compile time and the parts compiled in ``res``.
    Returns the compiled parts."""
    _say(f"{name}: compiling (torch.compile; paper on a 2-core CPU: about 2 minutes)")
    res["compile_mode"] = mode
    t0 = time.perf_counter()
    pipe.step(s.latents, s.t, s.masked, s.lmask, s.ctx)  # compiles (batch 1)
    s.step(pipe, s.guided_ctx)
    if pipe.model.vae is not None:  # the autoencoder's parts compile at the shapes a refine uses
        pipe.crop_inputs(p)  # encode: the crop and its hole-filled copy
        pipe.decode(torch.cat([s.latents] * pipe.model.cfg.default_samples).to(pipe.model.dtype))
    res["compile_s"] = time.perf_counter() - t0
    compiled = pipe.compiled_parts()
    res["compiled_parts"] = sorted(compiled)
    res["compiled"] = "unet" in compiled
    return compiled


def _time_unet(pipe, p, s: _StepInputs, name: str, compile: bool | str, timed: Callable, repeats: int, res: dict) -> None:
    """The U-Net's FLOPs and forward time into ``res``: compiled where ``compile`` asks for it and
    it compiles (the eager time kept beside it), and on a CPU where the forward's time goes."""
    model = pipe.model
    flops = unet_flops(lambda: s.forward(model.unet))
    res["unet_gflop"] = flops["total"]
    res["unet_gflop_by_class"] = {k: flops[k] for k in OP_CLASSES}
    unet = model.unet  # the U-Net the forward figures are of: the compiled one where it compiled
    unet_s = timed(lambda: s.forward(unet), repeats)
    res["unet_forward_s"] = unet_s
    mode = "default" if compile is True else compile
    if compile and pipe.enable_compile(mode=None if mode == "default" else mode):
        compiled = _compile(pipe, p, s, name, mode, res)
        if res["compiled"]:
            unet = compiled["unet"]
            res["unet_forward_eager_s"] = unet_s
            unet_s = timed(lambda: s.forward(unet), repeats)
            res["unet_forward_s"] = unet_s
    res["unet_gflops_achieved"] = res["unet_gflop"] / unet_s
    if s.t.device.type == "cpu":  # where the forward's time goes (module doc); GPU kernels are named otherwise
        res["unet_time_by_class_s"] = time_by_op_class(lambda: s.forward(unet))


def _time_steps(pipe, s: _StepInputs, timed: Callable, repeats: int) -> dict:
    """One denoising step without and with guidance, and at the batch a refine runs (K samples,
    twice over with guidance: [uncond, cond])."""
    model, cfg = pipe.model, pipe.model.cfg
    res = {
        "step_nocfg_s": timed(lambda: pipe.step(s.latents, s.t, s.masked, s.lmask, s.ctx), repeats),
        "step_s": timed(lambda: s.step(pipe, s.guided_ctx), repeats),
    }
    k = cfg.default_samples
    ctx_k = torch.cat([model.reference_encoder.unconditional(k), s.ctx.expand(k, -1, -1)]) if cfg.default_guidance != 1.0 else s.ctx.expand(k, -1, -1)
    res["unet_refine_batch"] = {"batch": ctx_k.shape[0], "s": timed(lambda: s.step(pipe, ctx_k), repeats)}
    return res


def _time_refines(pipe, example, name: str, timed: Callable, repeats: int) -> dict:
    """Whole refines of the synthetic input, a new reference each time (its matcher features not
    remembered): the median time and the median of each stage (the first run left out)."""
    image, mask, reference = example
    timings = []

    def refine():
        forget_remembered()
        timings.append(pipe(image, mask, reference, seed=0).timings)

    _say(f"{name}: whole refines of a 512x512 image ({max(1, repeats - 1) + 1} runs)")
    total = timed(refine, max(1, repeats - 1))
    return {"refine_512_s": total, "refine_512_parts_s": {k: statistics.median(tm[k] for tm in timings[1:] or timings) for k in timings[0]}}


#: The whole-refine time the speed target asks for (issue 13: a default 512 px refine < 2 s).
CASE_TARGET_S = 2.0
#: The alignment stage's time the speed target asks for (issue 13: < 0.5 s), read per case as the
#: pipeline's ``prepare`` (the inputs checked, the crop cut and, without a reference mask, the
#: reference object estimated) plus ``align`` (the dense field, or Algorithm 1 where it falls back).
ALIGN_TARGET_S = 0.5


def _time_cases(pipe, cases_dir: str, name: str, limit: int | None = None) -> dict:
    """Every case of a case folder refined once as ``bench-quality`` refines it (every reference of
    the case, the pipeline's defaults; a new reference each time: matcher features and object
    estimates forgotten), with the case's reference masks and again without them (the references'
    objects then estimated, as for a user who gives none). Real photos and masks, where the
    synthetic 512 px input is a worst case (a noise texture: GrabCut and FSR take longest there,
    and nothing matches). Per run: the total and the pipeline's stage timings; summarised overall
    and per kind of case (median, 90th percentile, max, how many under :data:`CASE_TARGET_S`)."""
    from ..evaluation.cases import load_cases

    cases = load_cases(cases_dir, limit=limit)  # (an InputError names a folder without cases, or a broken one)
    _say(f"{name}: {len(cases)} cases of {cases_dir}, each with and without its reference masks")

    # (the pipeline takes a list of one reference as that reference alone; reference_mask None: every one estimated)
    refs, masks = cases[0].references("all")
    for rmasks in (masks, None):  # warm-up (lazy imports, the allocator, GrabCut's first call)
        pipe(cases[0].image, cases[0].mask, refs, reference_mask=rmasks)
    runs = {"with_reference_mask": [], "without_reference_mask": []}
    for case in cases:
        refs, masks = case.references("all")
        for key, rmasks in (("with_reference_mask", masks), ("without_reference_mask", None)):
            forget_remembered()
            t = time.perf_counter()
            out = pipe(case.image, case.mask, refs, reference_mask=rmasks)
            total = time.perf_counter() - t
            runs[key].append({
                "case": case.id, "kind": case.kind, "references": len(refs), "reference_mask_given": rmasks is not None and any(m is not None for m in rmasks),
                "s": total, "parts_s": {k: v for k, v in out.timings.items() if k != "total"},
            })
    return {"folder": str(cases_dir), "target_s": CASE_TARGET_S, "align_target_s": ALIGN_TARGET_S, **{key: _summarise_cases(r) for key, r in runs.items()}}


def _alignment_s(run: dict) -> float:
    """A run's alignment stage as :data:`ALIGN_TARGET_S` reads it: its ``prepare`` plus ``align``."""
    return run["parts_s"].get("prepare", 0.0) + run["parts_s"].get("align", 0.0)


def _summarise_cases(runs: list[dict]) -> dict:
    """Median / 90th percentile / max seconds and the count under the target, overall and per kind;
    the same for the alignment stage (``alignment``: :func:`_alignment_s` against
    :data:`ALIGN_TARGET_S`); the median of each stage over the runs that have it; and every run."""
    def stats(s: np.ndarray, target: float) -> dict:
        return {"n": len(s), "median_s": float(np.median(s)), "p90_s": float(np.percentile(s, 90)), "max_s": float(s.max()), "under_target": int((s < target).sum())}

    def both(rs: list[dict]) -> dict:  # (the whole refine's figures, and the alignment stage's)
        return {**stats(np.array([r["s"] for r in rs]), CASE_TARGET_S), "alignment": stats(np.array([_alignment_s(r) for r in rs]), ALIGN_TARGET_S)}

    kinds = sorted({r["kind"] for r in runs})
    parts = sorted({k for r in runs for k in r["parts_s"]})
    return {
        **both(runs),
        "by_kind": {k: both([r for r in runs if r["kind"] == k]) for k in kinds},
        "parts_median_s": {p: float(np.median([r["parts_s"][p] for r in runs if p in r["parts_s"]])) for p in parts},
        "runs": runs,
    }


def benchmark_config(
    name: str,
    repeats: int = 3,
    bench_cases: str | None = None,
    dtype: str = "auto",
    compile: bool | str = False,
    device: str = "auto",
    case_limit: int | None = None,
    matcher_weights: str | None = None,
) -> dict:
    """Times of every stage of one config (a preset name or a model folder) on ``device``.
    ``compile``: False, True (torch.compile's default mode) or a mode name such as "max-autotune".
    ``matcher_weights``: the ALIKED weights the alignment uses (None: the default, where found);
    ``"matcher"`` in the result names the weights used (None: SIFT alone)."""
    from ..loading import load_pipeline
    from ..pipelines.pipeline import resolve_device

    dev = resolve_device(device)
    dtype = _resolve_dtype(name, dtype, native_bf16(dev))
    _say(f"{name}: loading ({dtype}, {dev})")
    pipe = load_pipeline(name, device=dev, dtype=DTYPES[dtype])
    if matcher_weights is not None:
        pipe.require_matcher(matcher_weights, "--matcher-weights")
    timed = partial(median_time, warmup=1, device=dev)  # timed(fn, repeats): the median on this config's device
    pipe.set_progress_bar_config(disable=True)
    model = pipe.model
    example = _example_inputs()
    res: dict = {"dtype": str(model.dtype).replace("torch.", ""), "device": str(dev), "random_weights": pipe.random_weights, "compiled": False}
    p = pipe.prepare(*example)
    ref_t = pipe.reference_tensor(p.reference, p.reference_box)
    with torch.no_grad():  # as the pipeline runs: dynamo compiles separately for inference mode
        _say(f"{name}: reference encoding and the alignment stage")
        res["encode_s"] = timed(lambda: model.encode_reference(ref_t), repeats)
        res |= _time_alignment(pipe, example, timed, repeats)
        s = _StepInputs.of(pipe, p, ref_t, dev)
        if dtype != "fp32":  # numerical check of the reduced precision against fp32, same weights
            res["unet_rel_error_vs_fp32"] = _reduced_precision_error(model, s, dtype)
        _say(f"{name}: U-Net FLOPs and forward")
        _time_unet(pipe, p, s, name, compile, timed, repeats, res)
        _say(f"{name}: denoising steps")
        res |= _time_steps(pipe, s, timed, repeats)
        res |= _time_refines(pipe, example, name, timed, repeats)
    if bench_cases:
        res["cases"] = _time_cases(pipe, bench_cases, name, case_limit)
    res["matcher"] = pipe.matcher_weights
    res["steps"] = model.cfg.default_steps
    res["guidance"] = model.cfg.default_guidance
    res["peak_rss_mb"] = peak_rss_mb()
    if dev.type == "cuda":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return res


def _benchmark_in_child(args: tuple) -> dict:
    import threading

    from tqdm import tqdm

    # the progress bars' lock: tqdm's default builds a multiprocessing lock, a semaphore this child
    # never releases (the pool ends it), which the parent's resource tracker then reports as leaked
    tqdm.set_lock(threading.RLock())
    *config, threads, keep_freed = args
    torch.set_num_threads(threads)
    if keep_freed:  # as the parent process has it (allocator.py)
        keep_freed_memory()
    res = benchmark_config(*config)
    res["allocator"] = allocator_setting()
    return res


def run_benchmark(
    configs: list[str],
    output: str | Path,
    repeats: int = 3,
    bench_cases: str | None = None,
    dtype: str = "auto",
    compile: bool | str = False,
    device: str = "auto",
    attention: bool = False,
    case_limit: int | None = None,
    matcher_weights: str | None = None,
) -> dict:
    """Ceiling, each config in its own process (so that peak RSS is that config's own), ceiling
    again; with ``attention``, also :func:`attention_sweep` (CPU) under ``"attention_sweep"``; with
    ``bench_cases`` (a case folder) each config also refines its cases (the first ``case_limit``),
    timed one by one (:func:`_time_cases`); ``matcher_weights``: the ALIKED weights every config's
    alignment uses (None: the default, where found)."""
    import multiprocessing

    from ..pipelines.pipeline import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(0)
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if dev.type == "cuda":
        machine += f", GPU {torch.cuda.get_device_name(dev)}"
    from ..fill import fsr_backend

    out: dict = {
        "date": date.today().isoformat(),
        "machine": machine,
        "device": str(dev),
        "fsr": fsr_backend(),  # the FSR fill's implementation (its speed differs 3-4x)
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
            results[name] = pool.apply(
                _benchmark_in_child, ((name, repeats, bench_cases, dtype, compile, str(dev), case_limit, matcher_weights, torch.get_num_threads(), keeps_freed_memory()),)
            )
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


def check_configs(text: str) -> list[str]:
    """The comma-separated ``--configs`` as a list; each config runs in a child process, so a name
    that is neither a preset nor a model folder is refused here, before any timing (InputError)."""
    from ..config import CONFIG_NAMES

    configs = [c.strip() for c in text.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIG_NAMES and not (Path(c) / "config.json").is_file():
            raise InputError(f"--configs: '{c}' is neither a preset ({', '.join(CONFIG_NAMES)}) nor a model folder with a config.json")
    return configs


def format_results(res: dict, output: str | Path) -> str:
    """The lines ``refine-by-align bench-speed`` prints for a :func:`run_benchmark` result written to ``output``."""
    lines = []
    c = res["ceiling"]
    lines.append(f"{res['machine']}: matmul ceiling fp32 {c['fp32_gflops']:.0f} GFLOP/s, bf16 {c['bf16_gflops']:.0f} GFLOP/s" + (f"; FSR fill: {res['fsr']}" if 'fsr' in res else ""))
    lines.append(f"{'config':<10} {'dtype':<9} {'encode':>7} {'align':>7} {'step':>7} {'step1':>7} {'refine512':>9} {'GFLOP':>8} {'ceil%':>6} {'RSS MB':>7}")
    for name, r in res.items():
        if not isinstance(r, dict) or "refine_512_s" not in r:
            continue
        lines.append(
            f"{name:<10} {r['dtype']:<9} {r['encode_s']:>7.3f} {r['align_s']:>7.3f} {r['step_s']:>7.3f} {r['step_nocfg_s']:>7.3f} "
            f"{r['refine_512_s']:>9.2f} {r['unet_gflop']:>8.2f} {100 * r['unet_fraction_of_ceiling']:>6.1f} {r['peak_rss_mb']:>7.0f}"
        )
    for name, r in res.items():
        if isinstance(r, dict) and "align_example_s" in r:
            lines.append(
                f"{name}: alignment dense {r['align_s']:.3f} s / attention (Algorithm 1) {r['align_attention_s']:.3f} s on the 512 px input; "
                f"on the shipped badge example: dense alignment {r['align_example_s']:.3f} s ({r.get('align_example_warm_s', float('nan')):.3f} s with the reference seen before), whole refine {r['refine_example_s']:.3f} s"
                + ("" if "matcher" not in r else f"; matcher: {Path(r['matcher']).name if r['matcher'] else 'none (SIFT alone)'}")
            )
    for name, r in res.items():
        if isinstance(r, dict) and "refine_512_parts_s" in r:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in r["refine_512_parts_s"].items())
            extra = f"; compiled ({r.get('compile_mode')}) in {r['compile_s']:.0f} s" if r.get("compiled") else ""
            err = f"; bf16 U-Net rel. error vs fp32 {r['unet_rel_error_vs_fp32']:.4f}" if "unet_rel_error_vs_fp32" in r else ""
            gpu = f"; peak GPU memory {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else ""
            lines.append(f"{name} ({r.get('device', 'cpu')}): refine parts (s): {parts}{extra}{err}{gpu}")
            rb = r["unet_refine_batch"]
            lines.append(f"{name}: U-Net at the refine's batch {rb['batch']}: {rb['s']:.3f} s a step, {100 * rb['fraction_of_ceiling']:.1f}% of the ceiling")
            if "unet_breakdown" in r:
                bd = r["unet_breakdown"]
                cls = ", ".join(
                    f"{k} {bd[k]['s']:.3f} s" + (f" ({bd[k]['gflops']:.0f} GFLOP/s, {100 * bd[k]['fraction_of_ceiling']:.0f}%)" if "gflops" in bd[k] else "")
                    for k in (*OP_CLASSES, "overhead")
                )
                lines.append(
                    f"{name}: U-Net forward {r['unet_forward_s']:.3f} s by op class: {cls}; with conv and linear at the ceiling "
                    f"and the rest as measured it would reach {100 * bd['unet_fraction_bound']:.0f}%"
                )
    for name, r in res.items():
        if isinstance(r, dict) and "cases" in r:
            for key, label in (("with_reference_mask", "with the reference masks"), ("without_reference_mask", "without (objects estimated)")):
                c = r["cases"][key]
                kinds = ", ".join(f"{k} {v['median_s']:.2f} (max {v['max_s']:.2f})" for k, v in c["by_kind"].items())
                parts = ", ".join(f"{k} {v:.2f}" for k, v in c["parts_median_s"].items() if v >= 0.005)
                lines.append(
                    f"{name}: {c['n']} cases of {r['cases']['folder']} {label}: whole refine median {c['median_s']:.2f} s, "
                    f"90th percentile {c['p90_s']:.2f}, max {c['max_s']:.2f}; {c['under_target']} of {c['n']} under {r['cases']['target_s']:g} s; "
                    f"by kind (median): {kinds}; stages (median): {parts}"
                )
                if "alignment" in c:  # (results written before it was summarised have none)
                    a = c["alignment"]
                    align_kinds = ", ".join(f"{k} {v['alignment']['median_s']:.2f} (max {v['alignment']['max_s']:.2f})" for k, v in c["by_kind"].items())
                    lines.append(
                        f"{name}: the same {label}, the alignment stage (prepare + align): median {a['median_s']:.2f} s, "
                        f"90th percentile {a['p90_s']:.2f}, max {a['max_s']:.2f}; {a['under_target']} of {a['n']} under {r['cases'].get('align_target_s', ALIGN_TARGET_S):g} s; "
                        f"by kind (median): {align_kinds}"
                    )
    if "attention_sweep" in res:
        a = res["attention_sweep"]
        sizes = ", ".join(f"{d}: {v['ms']:.1f} ms ({v['gflops']:.0f} GFLOP/s)" for d, v in a["by_head_size"].items())
        lines.append(f"attention, {a['tokens']} tokens x {a['heads']} heads, {a['dtype']}, by head size: {sizes}")
        pads = ", ".join(f"{p}: {v['ms']:.1f} ms" for p, v in a["padded"].items())
        lines.append(f"the paper's largest layer (batch 2, heads of 40) padded to: {pads} (max difference {a['padded_max_abs_diff']:.4f})")
    picture = Path(output).with_suffix(".png")
    also = f" and {picture} (where the U-Net's time goes)" if picture.exists() else ""
    lines.append(f"wrote {output}{also} (seconds; step = one denoising step with guidance, step1 = without)")
    return "\n".join(lines)
