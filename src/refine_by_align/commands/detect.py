"""``refine-by-align detect``: propose the artifact mask of an image from a reference (pipelines/detect.py)."""

from __future__ import annotations

import argparse

from ..config import DETECT_METHODS
from .common import MATCHER_WEIGHTS_WHERE, CLIError, print_notes
from .inputs import check_output, check_outputs

HELP = "propose the artifact mask: where the image disagrees with the reference warped onto it"
EXAMPLE = "refine-by-align detect --image gen.png --reference photo.jpg --reference-mask photo_mask.png --output mask.png --heatmap heat.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, help="the generated image to check")
    p.add_argument("--reference", required=True, help="reference photo of the same object")
    p.add_argument("--reference-mask", help="object mask of the reference (default: its alpha, else estimated from the photo)")
    p.add_argument("--output", required=True, help="the proposed artifact mask (.png, white = artifact)")
    p.add_argument("--heatmap", help="also write the disagreement heat map over the image here")
    p.add_argument(
        "--method", choices=DETECT_METHODS, default="learned",
        help="learned (default): features robust to colour shifts and small misalignments; colour: the plain colour difference after the warp",
    )
    p.add_argument("--threshold", type=float, default=None, help="learned: a probability, 0 < T < 1 (default 0.8); colour: MADs above the median, T > 0 (default 6)")
    p.add_argument("--matcher-weights", default=None, help=f"ALIKED weights: a .safetensors file, a folder, or a name (default: aliked-n16), {MATCHER_WEIGHTS_WHERE}; SIFT alone where none is found")


def run(args) -> int:
    from PIL import Image

    from ..io import check_detect_settings, load_image, load_mask, save_images_atomic

    # the arguments and the input files are checked before the heavy imports (torch: seconds)
    out = check_output(args.output, mode="L")
    heat_path = check_output(args.heatmap, "heatmap") if args.heatmap else None
    inputs = [("--image", args.image), ("--reference", args.reference)] + ([("--reference-mask", args.reference_mask)] if args.reference_mask else [])
    check_outputs(inputs, [("--output", out), ("--heatmap", heat_path)])
    check_detect_settings(args.method, args.threshold, "--threshold")
    image = load_image(args.image, "image")
    reference = load_image(args.reference, "reference")
    ref_mask = load_mask(args.reference_mask, "reference mask") if args.reference_mask else None
    from ..models.aliked import load_aliked
    from ..pipelines.detect import detect
    from ..visualize import render_heatmap_overlay

    aliked, reason = load_aliked(args.matcher_weights)
    if aliked is None and args.matcher_weights is not None:
        raise CLIError(f"--matcher-weights '{args.matcher_weights}': cannot load the ALIKED matcher: {reason}")
    notes = [] if aliked is not None else [f"ALIKED matcher unavailable ({reason}): detection uses SIFT alone"]
    names = {"reference": args.reference, **({"reference_mask": args.reference_mask} if args.reference_mask else {})}
    det = detect(image, reference, ref_mask, aliked=aliked, method=args.method, threshold=args.threshold, names=names)
    print_notes(notes + det.info.get("notes", []) + ([det.info["note"]] if "note" in det.info else []))
    outputs = [(Image.fromarray(det.mask.astype("uint8") * 255), out, "--output")]
    if heat_path is not None:
        outputs.append((render_heatmap_overlay(image.convert("RGB"), det.heatmap, alpha=0.6), heat_path, "--heatmap"))
    save_images_atomic(outputs)  # all of them or none
    how = (
        f"field from {det.info.get('inliers')} agreeing matches{', mirrored reference' if det.info.get('mirrored') else ''}"
        if det.field is not None else "no field"
    )
    print(f"wrote {out} ({int(det.mask.sum())} pixels, {det.mask.mean():.2%} of the image; {how})")
    if heat_path is not None:
        print(f"wrote {heat_path}")
    return 0
