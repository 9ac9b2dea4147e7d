"""``refine-by-align convert-matcher``: upstream's ALIKED checkpoint (.pth) to the safetensors the
alignment loads (models/aliked.py: convert_checkpoint)."""

from __future__ import annotations

import argparse

from .common import CLIError

HELP = "convert upstream's ALIKED checkpoint (.pth) to the .safetensors the alignment loads"
EXAMPLE = "refine-by-align convert-matcher aliked-n16.pth --output ~/weights/aliked/aliked-n16.safetensors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="upstream's file (Shiaoming/ALIKED, models/aliked-n16.pth), read with torch's tensors-only loader")
    p.add_argument("--output", help="the .safetensors to write (default: CHECKPOINT with .safetensors)")


def run(args) -> int:
    from ..models.aliked import convert_checkpoint

    try:
        out = convert_checkpoint(args.checkpoint, args.output)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(f"wrote {out} (use it with --matcher-weights {out}, or put it in a folder's aliked/ and set REFINE_BY_ALIGN_WEIGHTS to that folder)")
    return 0
