"""``refine-by-align align``: find where the masked part lives on the reference (Algorithm 1 or the dense field)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import common
from .inputs import add_input_arguments, check_alignment_options, check_output, check_outputs, input_files, read_inputs

HELP = "find where the masked part lives on the reference (the dense field, or Algorithm 1 with --alignment attention)"
EXAMPLE = "refine-by-align align --image gen.png --mask artifact.png --reference photo.jpg --output region.png --heatmap heat.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_arguments(p)
    p.add_argument("--output", required=True, help="the aligned region on the reference (.png)")
    p.add_argument("--heatmap", help="also write the heat map over the reference here")
    p.add_argument(
        "--field",
        help="also write the dense field here (.npz: xy, each zoom-in crop pixel's (x, y) on the reference; confidence; on_object; "
        "box, the crop on the image as x0, y0, x1, y1); dense alignment only",
    )
    common.add_alignment_options(p, deprecated=("--timestep", "--layer"))


def run(args) -> int:
    from PIL import Image

    from ..io import save_images_atomic, to_rgb
    from ..visualize import render_heatmap_overlay

    out = check_output(args.output, mode="L")
    heat_path = check_output(args.heatmap, "heatmap") if args.heatmap else None
    field_path = _check_field_output(args.field, args.alignment) if args.field else None
    record = common.record_beside(out)  # (an earlier record may be replaced, not another file of that name)
    check_outputs(input_files(args), [("--output", out), ("--heatmap", heat_path), ("--field", field_path), ("the record", record)])
    image, mask, reference, ref_mask, names = read_inputs(args)
    pipe = common.load_model(args.model, args.quiet, args.matcher_weights, args.dtype)
    check_alignment_options(pipe, args.alignment_timestep, args.alignment_layer)
    res = pipe.align(
        image, mask, reference, ref_mask, alignment_timestep=args.alignment_timestep, alignment_layer=args.alignment_layer, seed=args.seed, names=names,
        alignment=args.alignment, matchers=args.matchers,
    )
    common.print_notes(res.info.get("notes", []) + ([res.info["fallback"]] if "fallback" in res.info else []))
    outputs = [(Image.fromarray(res.region.astype("uint8") * 255), out, "--output")]
    if heat_path is not None:
        outputs.append((render_heatmap_overlay(to_rgb(reference), res.heatmap), heat_path, "--heatmap"))
    if field_path is not None and res.field is None:  # (before anything is written: all of the outputs or none)
        raise common.CLIError(f"--field '{field_path}': no dense field was found ({res.info.get('fallback', 'the alignment fell back')}); nothing written")
    record.unlink(missing_ok=True)  # (an earlier run's record never stands beside this run's outputs)
    save_images_atomic(outputs)  # all of them or none
    if field_path is not None:
        _write_field(field_path, res.field)
        outputs.append((None, field_path, "--field"))
    common.write_record_beside(record, _record(args, pipe, res), [(flag, path) for _, path, flag in outputs])
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
    if field_path is not None:
        f = res.field
        print(f"wrote {field_path} ({f.box.width}x{f.box.height} px of the image from ({f.box.x0}, {f.box.y0}), each with its (x, y) on the reference)")
    print(f"wrote {record} (the inputs, settings and environment this result was made with)")
    return 0


def _check_field_output(path: str, alignment: str | None) -> Path:
    """``--field``: a .npz file name, with the dense alignment (Algorithm 1 gives no field)."""
    p = Path(path)
    if alignment == "attention":
        raise common.CLIError("--field: Algorithm 1's alignment (--alignment attention) gives a region, not a field; use the dense alignment")
    if p.is_dir():
        raise common.CLIError(f"--field '{path}': is a folder; give a file name (e.g. {p / 'field.npz'})")
    if p.suffix.lower() != ".npz":
        raise common.CLIError(f"--field '{path}': the field is written as NumPy's .npz; give a name ending in .npz")
    return p


def _write_field(path: Path, fld) -> None:
    """The dense field as an .npz (written atomically): ``xy`` (h, w, 2) float32, each pixel of the
    zoom-in crop's (x, y) on the reference, in its full-resolution pixels; ``confidence`` (h, w)
    float32 in [0, 1]; ``on_object`` (h, w) bool, whether that position is on the reference object;
    ``box`` (4,) int, the crop on the image (x0, y0, x1, y1, half-open): image pixel (x0 + j, y0 + i)
    maps to ``xy[i, j]``."""
    import numpy as np

    from ..io import write_atomic

    arrays = {"xy": fld.xy.astype(np.float32), "on_object": np.asarray(fld.on_object, bool), "box": np.array(fld.box.as_tuple(), np.int64)}
    if fld.confidence is not None:
        arrays["confidence"] = fld.confidence.astype(np.float32)
    write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


def _record(args, pipe, res) -> dict:
    """What ``align`` saves beside its output (:func:`~refine_by_align.provenance.record`'s parts)."""
    settings = {
        "model": args.model, "seed": args.seed, "alignment": args.alignment, "matchers": args.matchers, "matcher_weights": args.matcher_weights,
        "alignment_timestep": args.alignment_timestep, "alignment_layer": args.alignment_layer, "dtype": args.dtype,
    }
    gave = {
        "alignment": res.method, "alignment_timestep": res.alignment_timestep, "alignment_layer": res.alignment_layer,
        "region_pixels": int(res.region.sum()), "field_box": None if res.field is None else res.field.box.as_tuple(),
        "used": {**common.model_used(pipe), **common.matchers_used(pipe, args.matchers, res.method == "dense")}, "info": res.info,
    }
    inputs = {"image": args.image, "mask": args.mask, "reference": args.reference, "reference_mask": args.reference_mask}
    return {"command": "align", "inputs": inputs, "settings": settings, "result": gave}


def _misfit_clause(misfit: float | None) -> str:
    """", its fit misses its own matches by X px: ..." where a refine would discount the warp for
    it (:func:`~refine_by_align.pipelines.warp.misfit_weight`), else ""."""
    from ..pipelines.warp import misfit_weight

    factor = misfit_weight(misfit)
    if misfit is None or factor >= 1.0:
        return ""
    use = f"a refine blends its warp in at {max(1, round(100 * factor))}% of its trust" if factor > 0 else "a refine does not use its warp"
    return f", its fit misses its own matches by {misfit:.1f} px: {use}"
