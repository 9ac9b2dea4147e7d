"""``refine-by-align demo``: refine the shipped examples (``demo/``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import common

HELP = "refine the shipped examples (and ../shared photos when present)"
EXAMPLE = "refine-by-align demo --output demo-output"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="demo-output", help="output folder (default: %(default)s)")
    p.add_argument("--model", default="default", help=f"{common.MODEL_HELP} or preset")


def run(args) -> int:
    from ..demo.run import run_demo
    from ..io import check_output_folder

    check_output_folder(args.output, "--output")
    pipe = common.load_model(args.model, args.quiet)
    run_demo(pipe, Path(args.output))
    return 0
