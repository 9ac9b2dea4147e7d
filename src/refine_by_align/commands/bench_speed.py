"""``refine-by-align bench-speed`` (formerly ``benchmark``): the speed tooling (``perf/``) from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import MATCHER_WEIGHTS_WHERE, CLIError, load_matcher

HELP = "speed: time every stage against this machine's matmul ceiling"
EXAMPLE = "refine-by-align bench-speed --configs default,paper --output speed.json --compile"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", default="default", help="comma-separated presets or model folders (e.g. default,paper)")
    p.add_argument("--output", required=True, help="JSON file; a picture of where the U-Net's time goes is written beside it (.png)")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    p.add_argument(
        "--cases",
        help="a case folder (make-cases): also refine each of its cases once, with and without its reference mask, "
        "and report the whole refine's median / 90th percentile / max per kind of case (real photos; the synthetic input is a worst case)",
    )
    p.add_argument("--case-limit", type=int, help="with --cases: only the first N cases")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 for paper where the device runs bf16 natively (a GPU, AMX or AVX-512 BF16), else fp32; fp32 for small models")
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=["default", "max-autotune"],
        help="torch.compile the denoising U-Net and the VAE encode / decode (inductor, frozen weights); optional mode",
    )
    p.add_argument("--device", default="auto", help="auto (a visible CUDA GPU, else the CPU), cpu or cuda")
    p.add_argument("--attention", action="store_true", help="also time PyTorch's CPU attention kernel by head size")
    p.add_argument(
        "--matcher-weights",
        default=None,
        help="ALIKED weights the alignment uses: a .safetensors file, a folder, or a name "
        f"(default: aliked-n16 where found, else SIFT alone; aliked-t16: the faster alignment, README), {MATCHER_WEIGHTS_WHERE}",
    )


def run(args) -> int:
    from ..io import check_output_path
    from ..perf.run import check_configs, format_results, run_benchmark
    from ..pipelines.pipeline import resolve_device

    try:  # a bad or absent device is a usage error, found before any config is built
        resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        raise CLIError(f"--device {args.device}: {e}") from None
    check_output_path(args.output, "--output")
    configs = check_configs(args.configs)  # each config runs in a child process: a bad name is found here
    if args.case_limit is not None and args.cases is None:
        raise CLIError("--case-limit needs --cases (a case folder)")
    if args.case_limit is not None and args.case_limit < 1:
        raise CLIError(f"--case-limit must be at least 1, got {args.case_limit}")
    if args.cases is not None:  # every case timed is read here, before the minutes of timing that come first
        from ..evaluation.cases import load_cases

        if not Path(args.cases).is_dir():
            raise CLIError(f"--cases: {args.cases} is not a folder (build one with refine-by-align make-cases)")
        load_cases(args.cases, limit=args.case_limit)
    if args.matcher_weights is not None:  # (checked here, before the minutes of timing; each config's process loads them)
        load_matcher(args.matcher_weights)
    res = run_benchmark(
        configs, args.output, args.repeats, args.cases, args.dtype, args.compile or False, args.device, args.attention, args.case_limit, args.matcher_weights
    )
    print(format_results(res, args.output))
    return 0
