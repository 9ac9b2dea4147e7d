"""``refine-by-align align``: find where the masked part lives on the reference (Algorithm 1 or the dense field)."""

from __future__ import annotations

import argparse

from . import common
from .inputs import add_input_arguments, check_alignment_options, check_output, check_outputs, input_files, read_inputs

HELP = "find where the masked part lives on the reference (the dense field, or Algorithm 1 with --alignment attention)"
EXAMPLE = "refine-by-align align --image gen.png --mask artifact.png --reference photo.jpg --output region.png --heatmap heat.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_arguments(p)
    p.add_argument("--output", required=True, help="the aligned region on the reference (.png)")
    p.add_argument("--heatmap", help="also write the heat map over the reference here")
    common.add_alignment_options(p, deprecated=("--timestep", "--layer"))


def run(args) -> int:
    from PIL import Image

    from ..io import save_images_atomic, to_rgb
    from ..visualize import render_heatmap_overlay

    out = check_output(args.output, mode="L")
    heat_path = check_output(args.heatmap, "heatmap") if args.heatmap else None
    check_outputs(input_files(args), [("--output", out), ("--heatmap", heat_path)])
    image, mask, reference, ref_mask, names = read_inputs(args)
    pipe = common.load_model(args.model, args.quiet, args.matcher_weights, args.dtype)
    check_alignment_options(pipe, args.alignment_timestep, args.alignment_layer)
    res = pipe.align(
        image, mask, reference, ref_mask, alignment_timestep=args.alignment_timestep, alignment_layer=args.alignment_layer, seed=args.seed, names=names,
        method=args.alignment, matchers=args.matchers,
    )
    common.print_notes(res.info.get("notes", []) + ([res.info["fallback"]] if "fallback" in res.info else []))
    outputs = [(Image.fromarray(res.region.astype("uint8") * 255), out, "--output")]
    if heat_path is not None:
        outputs.append((render_heatmap_overlay(to_rgb(reference), res.heatmap), heat_path, "--heatmap"))
    save_images_atomic(outputs)  # all of them or none
    how = (
        f"dense field from {res.info.get('source')} ({res.info.get('inliers')} agreeing matches"
        f"{', mirrored reference' if res.info.get('mirrored') else ''}"
        f"{', refined by optical flow' if (res.info.get('flow') or {}).get('kept') else ''}"
        f"{_misfit_clause(res.info.get('misfit_px'))})"
        if res.method == "dense" else f"attention at t={res.alignment_timestep}, l={res.alignment_layer}"
    )
    print(f"wrote {out} ({how}; {int(res.region.sum())} reference pixels)")
    if heat_path is not None:
        print(f"wrote {heat_path}")
    return 0


def _misfit_clause(misfit: float | None) -> str:
    """", its fit misses its own matches by X px: ..." where a refine would discount the warp for
    it (:func:`~refine_by_align.pipelines.warp.misfit_weight`), else ""."""
    from ..pipelines.warp import misfit_weight

    factor = misfit_weight(misfit)
    if misfit is None or factor >= 1.0:
        return ""
    use = f"a refine blends its warp in at {max(1, round(100 * factor))}% of its trust" if factor > 0 else "a refine does not use its warp"
    return f", its fit misses its own matches by {misfit:.1f} px: {use}"
