"""``refine-by-align make-cases``: a case-folder benchmark built from a multi-view photo folder."""

from __future__ import annotations

import argparse

HELP = "build a case-folder benchmark from a multi-view photo folder"
EXAMPLE = "refine-by-align make-cases --source ../shared/data/dreambooth-train --output cases/ --seed 0 --per-subject 6 --extra-references view"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="SUBJECT/NN.jpg + SUBJECT/NN_mask.png folder")
    p.add_argument("--output", required=True, help="cases folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subjects", help="comma-separated subjects (default: the held-out validation subjects)")
    p.add_argument("--per-subject", type=int, default=3, help="cases per subject; kinds rotate affine, nonrigid, multiview (default: %(default)s)")
    p.add_argument(
        "--extra-references", default="",
        help="more references per case, comma-separated roles: view (another photo), partial (part of the object), "
        "distractor (another subject), e.g. 'view' or 'distractor' or 'view,partial'",
    )
    p.add_argument(
        "--image-scale", type=float, default=1.0,
        help="scale the image, mask and target down by this factor (0 < S <= 1), not the references: a reference "
        "photo sharper than the image, e.g. 0.5 for one at twice its resolution (default: %(default)s)",
    )
    p.add_argument(
        "--upscale", type=int, default=1,
        help="scale every picture and mask of each case up by this whole factor (1..8), after --image-scale: "
        "the same cases on larger pictures, e.g. 4 for 2048 px (more pixels, not more detail; default: %(default)s)",
    )


def run(args) -> int:
    from ..data.make_cases import make_cases

    subjects = [s.strip() for s in args.subjects.split(",")] if args.subjects else None
    from ..data.make_cases import EXTRA_ROLES, MAX_UPSCALE
    from .common import CLIError

    extras = [r.strip() for r in args.extra_references.split(",") if r.strip()]
    bad = [r for r in extras if r not in EXTRA_ROLES]
    if bad:
        raise CLIError(f"--extra-references: unknown role(s) {', '.join(bad)} (choose from {', '.join(EXTRA_ROLES)})")
    if not 0.0 < args.image_scale <= 1.0:
        raise CLIError(f"--image-scale must be in (0, 1], got {args.image_scale}")
    if not 1 <= args.upscale <= MAX_UPSCALE:
        raise CLIError(f"--upscale must be a whole number in 1..{MAX_UPSCALE}, got {args.upscale}")
    paths = make_cases(
        args.source, args.output, args.seed, subjects=subjects, cases_per_subject=args.per_subject, extra_references=extras,
        image_scale=args.image_scale, upscale=args.upscale,
    )
    print(f"wrote {len(paths)} cases to {args.output}")
    return 0
