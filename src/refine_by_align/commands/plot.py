"""``refine-by-align plot``: a training run's loss curves to PNG."""

from __future__ import annotations

import argparse

from .common import CLIError

HELP = "plot a run's loss curves to PNG"
EXAMPLE = "refine-by-align plot runs/default --output loss.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--output", help="PNG path (default: RUN_DIR/loss.png)")


def run(args) -> int:
    from ..training.plot import plot_run

    try:  # no log yet, an empty one, an output format matplotlib cannot write: one line, exit 2
        out = plot_run(args.run_dir, args.output)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    print(f"wrote {out}")
    return 0
