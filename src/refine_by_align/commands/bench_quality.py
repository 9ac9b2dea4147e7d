"""``refine-by-align bench-quality`` (formerly ``bench``): run one method (or several, side by side) over a case
folder and score it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import MODEL_HELP, CLIError, add_alignment_options, load_matcher

HELP = "quality: run a method over a case folder and score it"
EXAMPLE = "refine-by-align bench-quality cases/ --output results/ --method all --limit 8"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cases_dir", help="folder of cases (see README: case-folder format)")
    p.add_argument("--output", required=True, help="results folder")
    p.add_argument(
        "--method", default="refine-by-align",
        help="refine-by-align | single-stage | feature-nn | oracle-align | keypoint | keep | telea | harmonic | fsr | mixed | mixed-local, "
        "a comma-separated list, or 'all' (then a report.md / report.json compares them)",
    )
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument("--model", default=None, help=f"{MODEL_HELP} or preset (refine-by-align methods)")
    p.add_argument("--clip", help="CLIP model folder or hub id for CLIP-I / CLIP-T (null when absent)")
    p.add_argument("--dino", help="DINOv2 model folder or hub id for DINO-I (null when absent)")
    p.add_argument("--captions", help="captions file for CLIP-T: JSON {case: caption} or 'case<TAB>caption' lines")
    p.add_argument("--steps", type=int, help="sampling steps of the pipeline methods (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale of the pipeline methods (default: the model's)")
    p.add_argument("--samples", type=int, help="samples averaged per case by the pipeline methods (default: the model's, or one where the warp gives almost all of the mask)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pipeline methods' sampling, the same for every case (default: %(default)s)")
    p.add_argument("--no-warp", action="store_true", help="dense alignment: redraw with the model alone, without pasting the warped reference")
    p.add_argument(
        "--references", default="all",
        help="cases with several references (make-cases --extra-references): 'all' of them (refine-by-align, single-stage), "
        "or one alone by its number (1 = reference.png); the other methods always use reference.png (default: %(default)s)",
    )
    p.add_argument(
        "--no-reference-masks", action="store_true",
        help="refine-by-align and single-stage: ignore the cases' reference masks, as a user who gives none "
        "(the reference object is then estimated from the photo; README, 'reference mask')",
    )
    add_alignment_options(p)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _method_options(args) -> dict | None:
    """The same sampling options for every pipeline method (methods that skip alignment ignore (t, l))."""
    from ..evaluation.registry import PIPELINE_METHODS

    call = {
        k: v
        for k, v in dict(
            num_inference_steps=args.steps, guidance_scale=args.guidance, alignment_timestep=args.alignment_timestep,
            alignment_layer=args.alignment_layer, num_samples=args.samples, alignment=args.alignment, matchers=args.matchers,
            warp=False if args.no_warp else None, seed=args.seed or None,
        ).items()
        if v is not None
    }
    options = {n: dict(call) for n in PIPELINE_METHODS}
    if args.references != "all":
        if not args.references.isdigit() or int(args.references) < 1:
            raise CLIError(f"--references must be 'all' or a reference number 1, 2, ..., got '{args.references}'")
        for n in ("refine-by-align", "single-stage"):  # the methods that take several references
            options[n]["references"] = int(args.references)
    if args.no_reference_masks:
        for n in ("refine-by-align", "single-stage"):
            options[n]["reference_masks"] = False
    return options if any(options.values()) else None


def _print_summary(summary: dict, method: str) -> None:
    """The summary table (masked PSNR in dB, the field's error in reference px), and a note where
    the method fell back on some cases (oracle-align without a true region, keypoint without a
    homography: each case's ``fallback`` in metrics.json)."""
    print(f"{'kind':<12} {'cases':>5} {'mIoU':>7} {'PSNR dB':>8} {'SSIM':>7} {'field px':>9} {'CLIP-I':>7} {'DINO-I':>7} {'s/case':>7} {'fallbacks':>9}")
    for kind, row in summary.items():
        print(
            f"{kind:<12} {row['cases']:>5} {_fmt(row['miou'], '.3f'):>7} {_fmt(row['psnr'], '.2f'):>8} "
            f"{_fmt(row['ssim'], '.3f'):>7} {_fmt(row.get('field_px'), '.3f'):>9} {_fmt(row.get('clip_i'), '.2f'):>7} {_fmt(row.get('dino_i'), '.2f'):>7} "
            f"{_fmt(row['seconds_per_case'], '.2f'):>7} {_fmt(row.get('fallbacks'), 'd'):>9}"
        )
    total = summary.get("ALL") or {}
    if total.get("fallbacks"):
        why = FALLBACK_MEANS.get(method, "it could not do what it is named for")
        print(f"note: {method} fell back on {total['fallbacks']} of {total['cases']} cases ({why}); each case's 'fallback' is in metrics.json")


#: What a method's fallback is (the note under the summary table).
FALLBACK_MEANS = {
    "oracle-align": "no true region, correspondence.png: aligned by the model instead",
    "keypoint": "no homography from SIFT's matches: Telea's fill instead",
}


def _check_not_mixed(out: Path, methods: list[str], model: str) -> None:
    """Refuse an output folder that holds another method's or model's results where this run
    would write (its metrics.json, or each method's sub-folder's): the case outputs of the two
    runs would be mixed in it. A rerun of the same method and model overwrites its own."""
    from ..evaluation.bench import results_owner, same_model
    from ..evaluation.registry import PIPELINE_METHODS

    for m in methods:
        metrics = out / m / "metrics.json" if len(methods) > 1 else out / "metrics.json"
        found = results_owner(metrics)
        if found is None:
            continue  # (none there, or not a results file of ours: overwritten)
        model_matters = m in PIPELINE_METHODS  # (a classical method's results do not depend on --model)
        if found[0] != m or (model_matters and not same_model(found[1], model)):
            raise CLIError(
                f"--output {out}: {metrics} holds results of method '{found[0]}' with model '{found[1]}', not '{m}' with '{model}': "
                "give a new --output folder (the two runs' case outputs would be mixed in it)"
            )


def run(args) -> int:
    from ..evaluation.bench import run_bench
    from ..evaluation.registry import PIPELINE_METHODS, _load_pipeline
    from ..evaluation.report import resolve_methods, run_all
    from ..io import SETTING_OPTIONS, check_output_apart, check_output_folder, check_seed, check_settings

    common = dict(limit=args.limit, model=args.model, clip=args.clip, dino=args.dino, captions=args.captions, progress=not args.quiet)
    matcher_weights = aliked = None
    if args.matcher_weights:  # loaded here (once), so a path without the weights is refused, not looked past
        aliked = load_matcher(args.matcher_weights)
        matcher_weights = str(Path(args.matcher_weights).resolve())
    check_settings(args.steps, args.guidance, args.samples, SETTING_OPTIONS)
    check_seed(args.seed, "--seed")
    check_output_folder(args.output, "--output")
    check_output_apart(args.output, {"cases": args.cases_dir})  # (the cases' true correspondences would be overwritten)
    options = _method_options(args)
    out = Path(args.output)
    _check_not_mixed(out, resolve_methods(args.method), args.model or "default")
    config = {  # (saved with the results: what they were made with)
        "command": "bench-quality", "method": args.method, "model": args.model or "default", "limit": args.limit,
        "method_options": (options or {}).get(args.method) if "," not in args.method and args.method != "all" else options,
        "references": args.references, "reference_masks": not args.no_reference_masks, "matcher_weights": matcher_weights,
        "clip": args.clip, "dino": args.dino, "captions": args.captions, "seed": args.seed,
    }
    if args.method == "all" or "," in args.method:
        run_all(args.cases_dir, args.output, methods=args.method, method_options=options, config=config, matcher_weights=aliked, **common)
        print((out / "report.md").read_text())
        print(f"wrote {out / 'report.md'}, {out / 'report.json'} and contact_<kind>.png")
        return 0
    method_options = dict((options or {}).get(args.method) or {})
    if aliked is not None and args.method in PIPELINE_METHODS:  # (a method that runs the alignment: its pipeline with this matcher)
        method_options["pipeline"] = _load_pipeline(args.model, aliked)
    res = run_bench(args.cases_dir, args.output, method=args.method, method_options=method_options or None, config=config, **common)
    _print_summary(res["summary"], args.method)
    print(f"wrote {out / 'metrics.json'} and {out / 'contact_sheet.png'}")
    return 0
