"""``refine-by-align make-cases``: a case-folder benchmark built from a multi-view photo folder."""

from __future__ import annotations

import argparse

HELP = "build a case-folder benchmark from a multi-view photo folder"
EXAMPLE = "refine-by-align make-cases --source ../shared/data/dreambooth-train --output cases/ --seed 0 --per-subject 6 --extra-references view"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="SUBJECT/NN.jpg + SUBJECT/NN_mask.png folder")
    p.add_argument("--output", required=True, help="cases folder to write: a new or empty folder, outside --source")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subjects", help="comma-separated subjects, each once (default: the held-out validation subjects)")
    p.add_argument("--per-subject", type=int, default=3, help="cases per subject, 1 or more; kinds rotate affine, nonrigid, multiview (default: %(default)s)")
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
    import shutil
    from pathlib import Path

    from ..data.make_cases import EXTRA_ROLES, MAX_UPSCALE, make_cases
    from ..io import check_output_apart
    from .common import CLIError

    subjects = None
    if args.subjects is not None:
        subjects = [s.strip() for s in args.subjects.split(",")]
        if not all(subjects):
            raise CLIError(f"--subjects '{args.subjects}': an empty subject name (give subject folder names, comma-separated)")
        twice = sorted({s for s in subjects if subjects.count(s) > 1})
        if twice:
            raise CLIError(f"--subjects names {', '.join(twice)} more than once: name each subject once (--per-subject sets its number of cases)")
    if args.per_subject < 1:
        raise CLIError(f"--per-subject must be 1 or more, got {args.per_subject}")
    extras = [r.strip() for r in args.extra_references.split(",") if r.strip()]
    bad = [r for r in extras if r not in EXTRA_ROLES]
    if bad:
        raise CLIError(f"--extra-references: unknown role(s) {', '.join(bad)} (choose from {', '.join(EXTRA_ROLES)})")
    if not 0.0 < args.image_scale <= 1.0:
        raise CLIError(f"--image-scale must be in (0, 1], got {args.image_scale}")
    if not 1 <= args.upscale <= MAX_UPSCALE:
        raise CLIError(f"--upscale must be a whole number in 1..{MAX_UPSCALE}, got {args.upscale}")
    out = Path(args.output)
    check_output_apart(out, {"source": args.source}, "--output")  # (cases inside the photo folder would read as a subject)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--output '{args.output}' is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        # another seed or other subjects would replace some case folders and keep the others: a mixed set
        raise CLIError(f"--output '{args.output}' is not empty (an earlier case set?): choose an empty or new folder, or remove it first")
    created = not out.exists()
    try:
        paths = make_cases(
            args.source, out, args.seed, subjects=subjects, cases_per_subject=args.per_subject, extra_references=extras,
            image_scale=args.image_scale, upscale=args.upscale,
        )
    except BaseException as e:
        if created and out.is_dir():  # (a refused or interrupted build leaves no folder behind)
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, ValueError):
            raise CLIError(str(e)) from None
        raise
    print(f"wrote {len(paths)} cases to {args.output}")
    return 0
