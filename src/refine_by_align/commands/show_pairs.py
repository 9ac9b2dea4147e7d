"""``refine-by-align show-pairs``: sampled training pairs drawn for a check by eye."""

from __future__ import annotations

import argparse

from .common import CLIError

HELP = "draw sampled training pairs for a check by eye"
EXAMPLE = "refine-by-align show-pairs --mode alignment -n 16 --output pairs.png"
DEFAULT_DATA_ROOT = "../shared/data/dreambooth-train"
MIN_SIZE = 8  # a crop side below this shows no hole worth a look
REF_SIZE = 32  # (show_pairs' reference side, as this command leaves it)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["alignment", "refinement", "multiview"], default="alignment")
    p.add_argument("-n", type=int, default=16, help="number of pairs, 1 or more (the grid may hold up to 64 million pixels; default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help=f"crop side in pixels, {MIN_SIZE} or more (default: %(default)s)")
    p.add_argument(
        "--data-root", default=None,
        help=f"multi-view photo folder (default: {DEFAULT_DATA_ROOT}, or synthetic objects only where it is absent; '' for synthetic only)",
    )
    p.add_argument("--output", required=True, help="PNG path")
    p.add_argument("--warp", action="store_true", help="the pairs of a hole_fill='warp' model: add the warp prefill and its trust map")


def run(args) -> int:
    import sys

    from ..data.pairs import grid_shape, show_pairs
    from ..data.readers import resolve_data_root
    from ..io import MAX_PIXELS

    if args.n < 1:
        raise CLIError(f"-n must be 1 or more pairs, got {args.n}")
    if args.size < MIN_SIZE:
        raise CLIError(f"--size must be {MIN_SIZE} px or more, got {args.size}")
    gh, gw = grid_shape(args.n, args.size, REF_SIZE, warp=args.warp)
    if gh * gw > MAX_PIXELS:
        raise CLIError(
            f"-n {args.n} at --size {args.size} makes a {gw}x{gh} px grid, over the {MAX_PIXELS:,} px a picture may have here: "
            "ask for fewer pairs or a smaller --size"
        )
    given = args.data_root is not None
    path = args.data_root if given else DEFAULT_DATA_ROOT
    found = resolve_data_root(path) if path else None
    if given and path and (found is None or not found.is_dir()):
        raise CLIError(f"--data-root '{path}': " + ("not a folder" if found is not None and found.exists() else "not found"))
    root = found if found is not None and found.is_dir() else None
    if args.mode == "multiview" and root is None:
        raise CLIError(f"--mode multiview needs multi-view photos: '{path}' is not a folder")
    if root is None and path:  # (the default folder absent: as train says it)
        print(f"note: no multi-view photos at '{path}': drawing synthetic objects only", file=sys.stderr)
    out = show_pairs(args.mode, args.n, args.seed, args.output, size=args.size, ref_size=REF_SIZE, data_root=root, warp=args.warp, progress=not args.quiet)
    print(f"wrote {out}")
    return 0
