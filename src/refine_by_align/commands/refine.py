"""``refine-by-align refine``: align, then refine the masked artifacts from the reference."""

from __future__ import annotations

import argparse

from . import common
from .inputs import add_input_arguments, check_alignment_options, check_output, check_outputs, input_files, read_inputs

HELP = "align, then refine the masked artifacts from the reference"
EXAMPLE = (
    "refine-by-align refine --image gen.png --mask artifact.png --reference photo.jpg --output fixed.png \\\n"
    "      --compare side-by-side.png --samples 8 --seed 1"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_arguments(p, several=True)
    p.add_argument("--output", required=True, help="refined image (.png, .tif, .webp or .bmp: lossless; .jpg: quality 95)")
    region = p.add_argument("--region", help="also write the aligned region (M*) on the (guiding) reference here")
    common.add_deprecated_alias(p, "--correspondence", region)
    p.add_argument("--compare", help="side-by-side picture (default: OUTPUT with '.compare.png')")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--no-align", action="store_true", help="single-stage ablation: guide with the whole reference")
    p.add_argument("--samples", type=int, help="average this many samples (default: the model's, or one where the warp gives almost all of the mask)")
    p.add_argument("--no-warp", action="store_true", help="dense alignment: redraw with the model alone, without pasting the warped reference")
    common.add_alignment_options(p)


def run(args) -> int:
    from PIL import Image

    from ..io import SETTING_OPTIONS, check_output_holds, check_settings, save_images_atomic, to_rgb

    # every check of the arguments and the input files comes before the heavy imports (torch,
    # diffusers: several seconds), so a mistyped path is said at once
    out = check_output(args.output)
    region_path = check_output(args.region, "region", "L") if args.region else None
    compare = check_output(args.compare, "compare") if args.compare else out.with_name(out.stem + ".compare.png")
    compare_flag = "--compare" if args.compare else "the compare picture"
    record = common.record_beside(out)  # (an earlier record may be replaced, not another file of that name)
    check_outputs(input_files(args), [("--output", out), ("--region", region_path), (compare_flag, compare), ("the record", record)])
    check_settings(args.steps, args.guidance, args.samples, SETTING_OPTIONS)
    if args.no_align:  # (the single-stage variant runs no alignment: these would be ignored without a word)
        given = [flag for flag, v in (("--alignment", args.alignment), ("--matchers", args.matchers),
                                      ("--alignment-timestep", args.alignment_timestep), ("--alignment-layer", args.alignment_layer)) if v is not None]
        if given:
            raise common.CLIError(f"--no-align runs no alignment, so {', '.join(given)} would do nothing: give one or the other")
    image, mask, reference, ref_mask, names = read_inputs(args)
    check_output_holds(out, image)  # (a transparent picture needs a format with alpha)
    from ..visualize import compare_picture

    pipe = common.load_model(args.model, args.quiet, args.matcher_weights, args.dtype)
    check_alignment_options(pipe, args.alignment_timestep, args.alignment_layer)
    result = pipe(
        image, mask, reference, ref_mask, num_inference_steps=args.steps, guidance_scale=args.guidance,
        seed=args.seed, align=not args.no_align, names=names,
        alignment_timestep=args.alignment_timestep, alignment_layer=args.alignment_layer, num_samples=args.samples,
        alignment=args.alignment, matchers=args.matchers, warp=not args.no_warp,
    )
    common.print_notes(result.notes)
    outputs = [(result.image, out, "--output")]
    if region_path is not None and result.region is not None:
        outputs.append((Image.fromarray(result.region.astype("uint8") * 255), region_path, "--region"))
    refs = reference if isinstance(reference, list) else [reference]
    picture = compare_picture(to_rgb(image), mask, [to_rgb(r) for r in refs], result)
    outputs.append((picture, compare, compare_flag))
    record.unlink(missing_ok=True)  # (an earlier run's record never stands beside this run's outputs)
    save_images_atomic(outputs)  # all of them or none
    common.write_record_beside(record, _record(args, pipe, result), [(flag, path) for _, path, flag in outputs])
    t = result.timings
    how = f"{result.alignment} alignment, {100 * result.warp_fraction:.0f}% of the mask from the warped reference" if result.alignment else "no alignment"
    print(f"wrote {out} ({t['total']:.2f} s: align {t['align']:.2f} s, denoise {t['denoise']:.2f} s, fill {t.get('fill', 0.0):.2f} s; {how})")
    if len(refs) > 1:
        for i, (r, name) in enumerate(zip(result.references, names["reference"])):
            ncc = "no field" if r.ring_ncc is None else f"ring correlation {r.ring_ncc:.2f}"
            guide = "; guided the model" if i == result.guide else ""
            print(f"  reference #{i + 1} {name}: {100 * r.warp_fraction:.0f}% of the mask from its warp ({ncc}){guide}")
    print(f"wrote {compare} (input | reference with the aligned region | result)")
    if region_path is not None:
        print(f"wrote {region_path}")
    print(f"wrote {record} (the inputs, settings and environment this result was made with)")
    return 0


def _record(args, pipe, result) -> dict:
    """What ``refine`` saves beside its output (:func:`~refine_by_align.provenance.record`'s parts):
    the input files, every setting as given (None: the model's default), what the run used (the
    model, its sampling with the defaults filled in, the matchers) and gave."""
    settings = {
        "model": args.model, "seed": args.seed, "steps": args.steps, "guidance": args.guidance, "samples": args.samples,
        "align": not args.no_align, "alignment": args.alignment, "matchers": args.matchers, "matcher_weights": args.matcher_weights,
        "alignment_timestep": args.alignment_timestep, "alignment_layer": args.alignment_layer, "warp": not args.no_warp, "dtype": args.dtype,
    }
    used = {
        **common.model_used(pipe), "random_weights": bool(result.random_weights), "sampling": result.sampling,
        **common.matchers_used(pipe, args.matchers, result.alignment == "dense"),
    }
    gave = {
        "alignment": result.alignment, "warp_fraction": round(float(result.warp_fraction), 4), "notes": list(result.notes),
        "crop_box": result.crop_box.as_tuple(), "reference_box": result.reference_box.as_tuple(), "guide": result.guide,
        "references": [{"alignment": r.alignment, "warp_fraction": round(float(r.warp_fraction), 4), "ring_ncc": r.ring_ncc} for r in result.references],
        "info": result.info, "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
    }
    inputs = {"image": args.image, "mask": args.mask, "reference": args.reference, "reference_mask": args.reference_mask}
    return {"command": "refine", "inputs": inputs, "settings": settings, "result": {"used": used, **gave}}
