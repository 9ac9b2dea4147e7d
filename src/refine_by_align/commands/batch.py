"""``refine-by-align batch``: refine every job of a JSONL manifest (``batch.py``)."""

from __future__ import annotations

import argparse
import sys

from . import common

HELP = "refine every job of a JSONL manifest (resumable; errors go to OUTPUT/errors.jsonl)"
EXAMPLE = (
    "refine-by-align batch jobs.jsonl --output out/\n"
    '  # jobs.jsonl, one job a line: {"image": "a.png", "mask": "a_mask.png", "reference": "ref.jpg", "output": "a.png"}\n'
    '  # several references: {"image": "b.png", "mask": "b_mask.png", "references": ["front.jpg", "side.jpg"],\n'
    '  #                      "reference_masks": [null, "side_mask.png"]}'
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="one JSON job per line: image, mask, reference (or references: a list), "
                   "[reference_mask (or reference_masks: a list, null allowed), steps, guidance, seed, output]")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--model", default="default", help=f"{common.MODEL_HELP} or preset")
    common.add_dtype_option(p)


def run(args) -> int:
    from ..batch import Shard, check_not_busy, failure_lines, finish_together, format_summary, read_manifest, run_batch
    from ..io import check_output_folder

    read_manifest(args.manifest)  # a bad manifest or output folder fails before the model loads
    check_output_folder(args.output, "--output")
    check_not_busy(args.output)  # (another batch writing there: said before the model loads too)
    pipe = common.load_model(args.model, args.quiet, dtype=args.dtype)
    summary = run_batch(args.manifest, args.output, pipe, progress=not args.quiet)
    for line in failure_lines(summary):
        print(line, file=sys.stderr)
    print(format_summary(summary), flush=True)
    finish_together(Shard(summary["rank"], summary["world"]))  # (a launcher stops all processes when one exits 1)
    return 1 if summary["failed"] else 0
