"""``refine-by-align derive-cases``: a case set whose reference is each case's artifact-free photo,
given without a mask, the image optionally edited as a generative model would (data/photo_cases.py)."""

from __future__ import annotations

import argparse

from .common import CLIError

HELP = "derive cases whose reference is the artifact-free photo itself (no mask), the image optionally softened"
EXAMPLE = "refine-by-align derive-cases suite-cases/val2 --output cases-photo/ --soften 0.7 --gamma 1.1 --gains 0.95,1,1.06 --jpeg 90"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cases_dir", help="a case folder with target.png per case (make-cases' output)")
    p.add_argument("--output", required=True, help="the folder to write the derived cases to: not the cases folder nor inside it; a derived case's folder there must be new or empty")
    p.add_argument("--prefix", default="", help="put before each case's name (to merge several sets in one folder)")
    p.add_argument("--crop", type=int, default=20, help="px cut from each side of the photo before it becomes the reference (default: %(default)s)")
    p.add_argument("--reference-size", type=int, default=560, help="the reference's side after the crop, px (default: %(default)s)")
    p.add_argument("--gamma", type=float, default=1.0, help="image and truth: each channel in [0, 1] to this power (default: %(default)s)")
    p.add_argument("--gains", default="1,1,1", help="image and truth: R,G,B gains after the gamma (default: %(default)s)")
    p.add_argument("--offset", type=float, default=0.0, help="image and truth: added after the gains, in [0, 1] units (default: %(default)s)")
    p.add_argument("--blur", type=float, default=0.0, help="image and truth: a Gaussian blur of this sigma, px (default: none)")
    p.add_argument("--soften", type=float, default=1.0, help="image and truth: scaled to this share and back, as made at a lower resolution (default: not)")
    p.add_argument("--jpeg", type=int, default=None, help="the image alone saved as JPEG at this quality (default: not)")


def run(args) -> int:
    from ..data.photo_cases import PhotoEdit, photo_reference_cases
    from ..io import InputError

    try:
        gains = tuple(float(g) for g in args.gains.split(","))
    except ValueError:
        raise CLIError(f"--gains must be three numbers R,G,B, got '{args.gains}'") from None
    if len(gains) != 3:
        raise CLIError(f"--gains must be three numbers R,G,B, got '{args.gains}'")
    edit = PhotoEdit(crop_px=args.crop, reference_size=args.reference_size, gamma=args.gamma, gains=gains, offset=args.offset,
                     blur=args.blur, soften=args.soften, jpeg=args.jpeg)
    try:
        written = photo_reference_cases(args.cases_dir, args.output, edit, prefix=args.prefix)
    except InputError as e:
        raise CLIError(str(e)) from None
    print(f"wrote {len(written)} cases to {args.output} (score them with: refine-by-align bench-quality {args.output} --output RESULTS --method refine-by-align,keypoint)")
    return 0
