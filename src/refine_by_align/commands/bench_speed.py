"""``refine-by-align bench-speed`` (formerly ``benchmark``): the speed tooling (``perf/``) from the command line."""

from __future__ import annotations

import argparse

from .common import CLIError

HELP = "speed: time every stage against this machine's matmul ceiling"
EXAMPLE = "refine-by-align bench-speed --configs default,paper --output speed.json --compile"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", default="default", help="comma-separated presets or model folders (e.g. default,paper)")
    p.add_argument("--output", required=True, help="JSON file; a picture of where the U-Net's time goes is written beside it (.png)")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    p.add_argument("--cases", help="a case folder: also time one whole case of it")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 for paper, fp32 for small models")
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=["default", "max-autotune"],
        help="torch.compile the denoising U-Net and the VAE encode / decode (inductor, frozen weights); optional mode",
    )
    p.add_argument("--device", default="auto", help="auto (a visible CUDA GPU, else the CPU), cpu or cuda")
    p.add_argument("--attention", action="store_true", help="also time PyTorch's CPU attention kernel by head size")


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
    res = run_benchmark(configs, args.output, args.repeats, args.cases, args.dtype, args.compile or False, args.device, args.attention)
    print(format_results(res, args.output))
    return 0
