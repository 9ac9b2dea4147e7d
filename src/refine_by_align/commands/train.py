"""``refine-by-align train``: the training loop (``training/train.py``) from a recipe."""

from __future__ import annotations

import argparse

from .common import CLIError

HELP = "train a model (accelerate: one CPU, a GPU, or several processes)"
EXAMPLE = "refine-by-align train --config default --output runs/default --max-steps 4750   # again with --resume after a stop"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="recipe name (default, tiny) or a JSON file")
    p.add_argument("--output", required=True, help="run folder (checkpoints, log.jsonl, weights/)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint (a folder that holds a run is refused without it)")
    p.add_argument("--max-steps", type=int, help="stop this invocation early at this global step (>= 1; the run still ends at the recipe's max_steps)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS", help="stop this invocation at the first step past this many seconds (checkpoint and weights written; --resume continues)")
    p.add_argument("--data-root", metavar="PATH",
                   help="multi-view photo folder, in place of the recipe's data_root (it must exist; 'none': synthetic objects only); "
                        "the run records the folder it used, and --resume refuses to go on with other photos unless this is given")


def run(args) -> int:
    from ..training.train import Interrupted, load_train_config, train

    if args.time_limit is not None and not 0 < args.time_limit < float("inf"):
        raise CLIError(f"--time-limit must be a positive number of seconds, got {args.time_limit:g}")
    if args.max_steps is not None and args.max_steps < 1:
        raise CLIError(f"--max-steps must be a step number >= 1 (where this invocation stops), got {args.max_steps}")
    try:
        tc = load_train_config(args.config)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    try:  # a recipe whose parts do not fit or cannot be had (pretrained weights, init_from) is a usage error
        train(tc, args.output, resume=args.resume, max_steps=args.max_steps, progress=not args.quiet, time_limit=args.time_limit,
              data_root=args.data_root, recipe=args.config)  # (its main process says where and why it stopped)
    except ValueError as e:
        raise CLIError(str(e)) from None
    except Interrupted:  # Ctrl-C: a checkpoint of the last step is written, and train said where
        return 130
    return 0
