"""``refine-by-align grid-search``: the alignment's mIoU for every (timestep, layer) (Algorithm 1's grid, Fig. 4, 7)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import MODEL_HELP, CLIError, int_list

HELP = "mIoU of the alignment for every (timestep, layer) (Fig. 4, 7)"
EXAMPLE = "refine-by-align grid-search cases/ --output grid/ --timesteps 0,250,500 --layers 0,3,6"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cases_dir", help="case folder; cases need correspondence.png (the true region)")
    p.add_argument("--output", required=True, help="results folder")
    p.add_argument("--model", default="default", help=f"{MODEL_HELP} or preset")
    p.add_argument("--timesteps", default="0,24,100,250,500,750,999", help="comma-separated timesteps (default: %(default)s)")
    p.add_argument("--layers", help="comma-separated layer indices (default: all cross-attention layers)")
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise added at each timestep (default: %(default)s)")


def run(args) -> int:
    from ..evaluation.grid_search import grid_search
    from ..io import check_output_apart, check_output_folder, check_seed

    check_output_folder(args.output, "--output")
    check_output_apart(args.output, {"cases": args.cases_dir})
    seed = check_seed(args.seed, "--seed")
    try:
        res = grid_search(
            args.cases_dir, args.output, model=args.model, timesteps=int_list(args.timesteps, "--timesteps"),
            layers=int_list(args.layers, "--layers") if args.layers else None, limit=args.limit, seed=seed, progress=not args.quiet,
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    b = res["best"]
    t, l = b["alignment_timestep"], b["alignment_layer"]
    if res["skipped"]:
        names = ", ".join(res["skipped"][:8]) + (f" and {len(res['skipped']) - 8} more" if len(res["skipped"]) > 8 else "")
        print(f"note: {len(res['skipped'])} case(s) without a correspondence.png (no true region to score) left out: {names}")
    print(f"best (t, l) = ({t}, {l}): mIoU {b['miou']:.3f} over {res['cases']} cases")
    print(
        f"use it with: refine ... --alignment attention --alignment-timestep {t} --alignment-layer {l} (Algorithm 1's alignment; "
        "the default dense alignment reads (t, l) only where it finds no field; align and bench-quality take the same options)"
    )
    print(f"wrote {Path(args.output) / 'grid.json'} (the mIoU table and each case's IoU), grid_heatmap.png, grid_marginals.png, {res['example_maps']}")
    return 0
