"""``refine-by-align show-pairs``: sampled training pairs drawn for a check by eye."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CLIError

HELP = "draw sampled training pairs for a check by eye"
EXAMPLE = "refine-by-align show-pairs --mode alignment -n 16 --output pairs.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["alignment", "refinement", "multiview"], default="alignment")
    p.add_argument("-n", type=int, default=16, help="number of pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="crop side in pixels")
    p.add_argument("--data-root", default="../shared/data/dreambooth-train", help="multi-view photo folder")
    p.add_argument("--output", required=True, help="PNG path")
    p.add_argument("--warp", action="store_true", help="the pairs of a hole_fill='warp' model: add the warp prefill and its trust map")


def run(args) -> int:
    from ..data.pairs import show_pairs
    from ..data.readers import resolve_data_root

    found = resolve_data_root(args.data_root) if args.data_root else None
    root = found if found is not None and found.is_dir() else None
    if args.mode == "multiview" and root is None:
        raise CLIError(f"--mode multiview needs multi-view photos: '{args.data_root}' is not a folder")
    out = show_pairs(args.mode, args.n, args.seed, args.output, size=args.size, data_root=root, warp=args.warp)
    print(f"wrote {out}")
    return 0
