"""The ``refine-by-align`` command line. Every user error ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2
MAX_SEED = 2**63 - 1  # the same range as the server's form field and the batch manifest


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, help="the generated image with artifacts")
    p.add_argument("--mask", required=True, help="artifact mask (bright / nonzero = artifact)")
    p.add_argument("--reference", required=True, help="reference photo of the same object")
    p.add_argument("--reference-mask", help="object mask of the reference (default: its alpha, else estimated from the photo)")
    p.add_argument("--model", default="default", help="model folder, or a preset name: default | tiny | paper (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed, an integer in 0..2^63-1 (default: %(default)s)")


# One example per subcommand, shown at the end of its --help.
EXAMPLES = {
    "refine": "refine-by-align refine --image gen.png --mask artifact.png --reference photo.jpg --output fixed.png \\\n"
              "      --compare side-by-side.png --samples 8 --seed 1",
    "align": "refine-by-align align --image gen.png --mask artifact.png --reference photo.jpg --output region.png --heatmap heat.png",
    "bench": "refine-by-align bench cases/ --output results/ --method all --limit 8",
    "grid-search": "refine-by-align grid-search cases/ --output grid/ --timesteps 0,250,500 --layers 0,4,9",
    "benchmark": "refine-by-align benchmark --configs default,paper --output speed.json --compile",
    "serve": "refine-by-align serve --model default --port 7860 --log-level warning   # then open http://127.0.0.1:7860/",
    "batch": "refine-by-align batch jobs.jsonl --output out/\n"
             '  # jobs.jsonl, one job a line: {"image": "a.png", "mask": "a_mask.png", "reference": "ref.jpg", "output": "a.png"}',
    "demo": "refine-by-align demo --output demo-output",
    "train": "refine-by-align train --config default --output runs/default --max-steps 4750   # again with --resume after a stop",
    "plot": "refine-by-align plot runs/default --output loss.png",
    "show-pairs": "refine-by-align show-pairs --mode alignment -n 16 --output pairs.png",
    "make-cases": "refine-by-align make-cases --source ../shared/data/dreambooth-train --output cases/ --seed 0 --per-subject 6",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refine-by-align",
        description="Repair localized artifacts in a generated image from a reference photo (Refine-by-Align).",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("refine", help="align, then refine the masked artifacts from the reference")
    _add_inputs(p)
    p.add_argument("--output", required=True, help="refined image (.png / .jpg)")
    p.add_argument("--correspondence", help="also write the correspondence mask on the reference here")
    p.add_argument("--compare", help="side-by-side picture (default: OUTPUT with '.compare.png')")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--no-align", action="store_true", help="single-stage ablation: guide with the whole reference")
    p.add_argument("--samples", type=int, help="average this many samples (default: the model's)")
    p.add_argument("--no-warp", action="store_true", help="dense alignment: redraw with the model alone, without pasting the warped reference")
    _add_alignment_options(p)

    p = sub.add_parser("align", help="find where the masked part lives on the reference (Algorithm 1)")
    _add_inputs(p)
    p.add_argument("--output", required=True, help="correspondence mask on the reference (.png)")
    p.add_argument("--heatmap", help="also write the heat map over the reference here")
    _add_alignment_options(p, "--timestep", "--layer")

    p = sub.add_parser("bench", help="run a method over a case folder and score it")
    p.add_argument("cases_dir", help="folder of cases (see README: case-folder format)")
    p.add_argument("--output", required=True, help="results folder")
    p.add_argument(
        "--method", default="refine-by-align",
        help="refine-by-align | single-stage | feature-nn | oracle-align | keypoint | keep | telea, "
        "a comma-separated list, or 'all' (then a report.md / report.json compares them)",
    )
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument("--model", default=None, help="model folder or preset (refine-by-align methods)")
    p.add_argument("--clip", help="CLIP model folder or hub id for CLIP-I / CLIP-T (null when absent)")
    p.add_argument("--dino", help="DINOv2 model folder or hub id for DINO-I (null when absent)")
    p.add_argument("--captions", help="captions file for CLIP-T: JSON {case: caption} or 'case<TAB>caption' lines")
    p.add_argument("--steps", type=int, help="sampling steps of the pipeline methods (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale of the pipeline methods (default: the model's)")
    p.add_argument("--samples", type=int, help="samples averaged per case by the pipeline methods (default: the model's)")
    p.add_argument("--no-warp", action="store_true", help="dense alignment: redraw with the model alone, without pasting the warped reference")
    _add_alignment_options(p)

    p = sub.add_parser("grid-search", help="mIoU of the alignment for every (timestep, layer) (Fig. 4, 7)")
    p.add_argument("cases_dir", help="case folder; cases need correspondence.png")
    p.add_argument("--output", required=True, help="results folder")
    p.add_argument("--model", default="default", help="model folder or preset")
    p.add_argument("--timesteps", default="0,24,100,250,500,750,999", help="comma-separated timesteps")
    p.add_argument("--layers", help="comma-separated layer indices (default: all cross-attention layers)")
    p.add_argument("--limit", type=int, help="only the first N cases")

    p = sub.add_parser("benchmark", help="time every stage against this machine's matmul ceiling")
    p.add_argument("--configs", default="default", help="comma-separated presets or model folders (e.g. default,paper)")
    p.add_argument("--output", required=True, help="JSON file; a picture of where the U-Net's time goes is written beside it (.png)")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    p.add_argument("--cases", help="a case folder: also time one whole bench case")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 for paper, fp32 for small models")
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=["default", "max-autotune"],
        help="torch.compile the denoising U-Net and the VAE encode / decode (inductor, frozen weights); optional mode",
    )
    p.add_argument("--device", default="auto", help="auto (a visible CUDA GPU, else the CPU), cpu or cuda")
    p.add_argument("--attention", action="store_true", help="also time PyTorch's CPU attention kernel by head size")

    p = sub.add_parser("serve", help="local web app + HTTP API (binds 127.0.0.1 unless --host says otherwise)")
    from .server.settings import add_serve_arguments  # no FastAPI import at parse time

    add_serve_arguments(p)

    p = sub.add_parser("batch", help="refine every job of a JSONL manifest (resumable; errors go to OUTPUT/errors.jsonl)")
    p.add_argument("manifest", help="one JSON job per line: image, mask, reference, [reference_mask, steps, guidance, seed, output]")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--model", default="default", help="model folder or preset")

    p = sub.add_parser("demo", help="refine the shipped examples (and ../shared photos when present)")
    p.add_argument("--output", default="demo-output", help="output folder (default: %(default)s)")
    p.add_argument("--model", default="default", help="model folder or preset")

    p = sub.add_parser("train", help="train a model (accelerate: one CPU, a GPU, or several processes)")
    p.add_argument("--config", required=True, help="recipe name (default, tiny) or a JSON file")
    p.add_argument("--output", required=True, help="run folder (checkpoints, log.jsonl, weights/)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--max-steps", type=int, help="stop this invocation at this global step")

    p = sub.add_parser("plot", help="plot a run's loss curves to PNG")
    p.add_argument("run_dir")
    p.add_argument("--output", help="PNG path (default: RUN_DIR/loss.png)")

    p = sub.add_parser("show-pairs", help="draw sampled training pairs for a check by eye")
    p.add_argument("--mode", choices=["alignment", "refinement", "multiview"], default="alignment")
    p.add_argument("-n", type=int, default=16, help="number of pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="crop side in pixels")
    p.add_argument("--data-root", default="../shared/data/dreambooth-train", help="multi-view photo folder")
    p.add_argument("--output", required=True, help="PNG path")
    p.add_argument("--warp", action="store_true", help="the pairs of a hole_fill='warp' model: add the warp prefill and its trust map")

    p = sub.add_parser("make-cases", help="build a case-folder benchmark from a multi-view photo folder")
    p.add_argument("--source", required=True, help="SUBJECT/NN.jpg + SUBJECT/NN_mask.png folder")
    p.add_argument("--output", required=True, help="cases folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subjects", help="comma-separated subjects (default: the held-out validation subjects)")
    p.add_argument("--per-subject", type=int, default=3, help="cases per subject; kinds rotate affine, nonrigid, multiview (default: %(default)s)")
    for name, sp in sub.choices.items():  # every subcommand's help ends with an example
        if name in EXAMPLES:
            sp.formatter_class = argparse.RawDescriptionHelpFormatter
            sp.epilog = "example:\n  " + EXAMPLES[name]
    return parser


def _add_alignment_options(p, t_flag: str = "--align-timestep", l_flag: str = "--align-layer") -> None:
    p.add_argument(
        "--alignment", choices=("dense", "attention"), default=None,
        help="dense (default): a per-pixel field from point matches, M* = the mask pushed through it; "
        "attention: the paper's Algorithm 1 region on the 16x16 token grid",
    )
    p.add_argument(
        "--matchers", default=None,
        help="the dense field's match sources joined by '+': sift, aliked, attention (default: sift+aliked where "
        "the ALIKED weights are found, else sift)",
    )
    p.add_argument("--matcher-weights", default=None, help="ALIKED weights (.safetensors file or folder; default: ../shared/weights/aliked)")
    p.add_argument(t_flag, type=int, dest=t_flag.lstrip("-").replace("-", "_"), help="timestep t of the attention pass (default: the model's; see grid-search)")
    p.add_argument(l_flag, type=int, dest=l_flag.lstrip("-").replace("-", "_"), help="cross-attention layer l of the attention pass (default: the model's)")


def _load_pipeline(model: str, quiet: bool, matcher_weights: str | None = None):
    from .loading import load_pipeline

    pipe = load_pipeline(model)  # an unusable model: one InputError line, exit 2
    if pipe.random_weights:
        print(
            f"WARNING: model '{model}' has no trained weights: running with RANDOM weights, the output is a "
            "stand-in, not a refinement.",
            file=sys.stderr,
        )
    pipe.set_progress_bar_config(disable=quiet, leave=False, desc="refine")
    if matcher_weights is not None and not pipe.set_matcher(matcher_weights):
        raise CLIError(f"--matcher-weights: {pipe._aliked_note}")
    return pipe


def _print_notes(notes) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _read_inputs(args):
    """Load and check every input file before any model is loaded: errors come first and alone."""
    from .io import load_inputs

    # every header first (sizes compared before any pixel is decoded), then the pixels
    files = {"image": args.image, "mask": args.mask, "reference": args.reference, "reference_mask": args.reference_mask}
    return load_inputs(files, labels={"reference_mask": "reference mask"})


def _check_output(path: str, what: str = "output", mode: str = "RGB") -> Path:
    from PIL import Image

    from .io import encode_image

    p = Path(path)
    if p.suffix.lower() not in Image.registered_extensions():
        raise CLIError(f"{what} '{path}': unknown image extension '{p.suffix}' (use .png or .jpg)")
    if p.exists() and p.is_dir():
        raise CLIError(f"{what} '{path}': is a folder")
    encode_image(Image.new(mode, (8, 8)), p, what)  # a format that cannot hold the picture is found now
    return p


def _input_files(args) -> list[tuple[str, str]]:
    """(option, path) of every input file of a refine / align call."""
    files = [("--image", args.image), ("--mask", args.mask), ("--reference", args.reference)]
    if args.reference_mask:
        files.append(("--reference-mask", args.reference_mask))
    return files


def _check_outputs(inputs: list[tuple[str, str]], outputs: list[tuple[str, Path | None]]) -> None:
    """Before any work: no output may be an input file or another output of the same call (symlinks,
    ``..`` and hard links included), and every output must be writable where it is going."""
    from .io import check_output_path, same_file

    outputs = [(flag, path) for flag, path in outputs if path is not None]
    for i, (flag, path) in enumerate(outputs):
        for in_flag, in_path in inputs:
            if same_file(path, in_path):
                raise CLIError(f"{flag} '{path}' is the {in_flag} file '{in_path}': refusing to overwrite an input")
        for other_flag, other in outputs[:i]:
            if same_file(path, other):
                raise CLIError(f"{flag} '{path}' and {other_flag} '{other}' are the same file: give each output its own path")
    for flag, path in outputs:
        check_output_path(path, flag)


def _check_alignment_options(pipe, timestep: int | None, layer: int | None, t_flag: str, l_flag: str) -> None:
    """The alignment pass's (t, l) against the loaded model's ranges, before any computation."""
    n = pipe.model.cfg.num_train_timesteps
    if timestep is not None and not 0 <= timestep < n:
        raise CLIError(f"{t_flag} {timestep} is out of range 0..{n - 1} (this model's timesteps)")
    n_layers = len(pipe.model.cross_attention_layers)
    if layer is not None and not 0 <= layer < n_layers:
        raise CLIError(f"{l_flag} {layer} is out of range 0..{n_layers - 1} (this model's cross-attention layers)")


def cmd_refine(args) -> int:
    from PIL import Image

    from .io import save_images_atomic, to_rgb
    from .visualize import compare_picture

    out = _check_output(args.output)
    corr_path = _check_output(args.correspondence, "correspondence", "L") if args.correspondence else None
    compare = _check_output(args.compare, "compare") if args.compare else out.with_name(out.stem + ".compare.png")
    _check_outputs(
        _input_files(args),
        [("--output", out), ("--correspondence", corr_path), ("--compare" if args.compare else "the compare picture", compare)],
    )
    from .pipelines.pipeline import check_settings

    check_settings(args.steps, args.guidance, args.samples)
    image, mask, reference, ref_mask, names = _read_inputs(args)
    pipe = _load_pipeline(args.model, args.quiet, args.matcher_weights)
    _check_alignment_options(pipe, args.align_timestep, args.align_layer, "--align-timestep", "--align-layer")
    result = pipe(
        image, mask, reference, ref_mask, num_inference_steps=args.steps, guidance_scale=args.guidance,
        seed=args.seed, align=not args.no_align, names=names,
        alignment_timestep=args.align_timestep, alignment_layer=args.align_layer, num_samples=args.samples,
        alignment=args.alignment, matchers=args.matchers, warp=not args.no_warp,
    )
    _print_notes(result.notes)
    outputs = [(result.image, out, "--output")]
    if corr_path is not None and result.correspondence_mask is not None:
        outputs.append((Image.fromarray(result.correspondence_mask.astype("uint8") * 255), corr_path, "--correspondence"))
    picture = compare_picture(to_rgb(image), mask, to_rgb(reference), result)
    outputs.append((picture, compare, "--compare" if args.compare else "the compare picture"))
    save_images_atomic(outputs)  # all of them or none
    t = result.timings
    how = f"{result.alignment} alignment, {100 * result.warp_fraction:.0f}% of the mask from the warped reference" if result.alignment else "no alignment"
    print(f"wrote {out} ({t['total']:.2f} s: align {t['align']:.2f} s, denoise {t['denoise']:.2f} s; {how})")
    print(f"wrote {compare} (input | reference with correspondence | result)")
    if corr_path is not None:
        print(f"wrote {corr_path}")
    return 0


def cmd_align(args) -> int:
    from PIL import Image

    from .io import save_images_atomic, to_rgb
    from .visualize import render_heatmap_overlay

    out = _check_output(args.output, mode="L")
    heat_path = _check_output(args.heatmap, "heatmap") if args.heatmap else None
    _check_outputs(_input_files(args), [("--output", out), ("--heatmap", heat_path)])
    image, mask, reference, ref_mask, names = _read_inputs(args)
    pipe = _load_pipeline(args.model, args.quiet, args.matcher_weights)
    _check_alignment_options(pipe, args.timestep, args.layer, "--timestep", "--layer")
    res = pipe.align(
        image, mask, reference, ref_mask, timestep=args.timestep, layer=args.layer, seed=args.seed, names=names,
        method=args.alignment, matchers=args.matchers,
    )
    _print_notes(res.info.get("notes", []) + ([res.info["fallback"]] if "fallback" in res.info else []))
    outputs = [(Image.fromarray(res.mask.astype("uint8") * 255), out, "--output")]
    if heat_path is not None:
        outputs.append((render_heatmap_overlay(to_rgb(reference), res.heatmap), heat_path, "--heatmap"))
    save_images_atomic(outputs)  # all of them or none
    how = (
        f"dense field from {res.info.get('source')} ({res.info.get('inliers')} agreeing matches"
        f"{', mirrored reference' if res.info.get('mirrored') else ''})" if res.method == "dense" else f"attention at t={res.timestep}, l={res.layer}"
    )
    print(f"wrote {out} ({how}; {int(res.mask.sum())} reference pixels)")
    if heat_path is not None:
        print(f"wrote {heat_path}")
    return 0


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def cmd_bench(args) -> int:
    from .evaluation.bench import run_bench
    from .evaluation.report import run_all

    from .evaluation.registry import PIPELINE_METHODS
    from .io import check_output_folder
    from .pipelines.pipeline import check_settings

    common = dict(limit=args.limit, model=args.model, clip=args.clip, dino=args.dino, captions=args.captions, progress=not args.quiet)
    if args.matcher_weights:  # the pipelines are built inside the evaluation code: point ALIKED's lookup there
        from .models.aliked import WEIGHTS_ENV

        if not Path(args.matcher_weights).is_dir():
            raise CLIError(f"--matcher-weights '{args.matcher_weights}': bench takes a folder (holding aliked-n16.safetensors)")
        os.environ[WEIGHTS_ENV] = str(Path(args.matcher_weights).resolve())
    check_settings(args.steps, args.guidance, args.samples)
    check_output_folder(args.output, "--output")
    call = {
        k: v
        for k, v in dict(
            num_inference_steps=args.steps, guidance_scale=args.guidance, alignment_timestep=args.align_timestep,
            alignment_layer=args.align_layer, num_samples=args.samples, alignment=args.alignment, matchers=args.matchers,
            warp=False if args.no_warp else None,
        ).items()
        if v is not None
    }
    # the same sampling options for every pipeline method (methods that skip alignment ignore (t, l))
    options = {n: dict(call) for n in PIPELINE_METHODS} if call else None
    out = Path(args.output)
    if args.method == "all" or "," in args.method:
        res = run_all(args.cases_dir, args.output, methods=args.method, method_options=options, **common)
        print((out / "report.md").read_text())
        print(f"wrote {out / 'report.md'}, {out / 'report.json'} and contact_<kind>.png")
        return 0
    res = run_bench(args.cases_dir, args.output, method=args.method, method_options=(options or {}).get(args.method), **common)
    print(f"{'kind':<12} {'cases':>5} {'mIoU':>7} {'PSNR':>7} {'SSIM':>7} {'CLIP-I':>7} {'DINO-I':>7} {'s/case':>7}")
    for kind, row in res["summary"].items():
        print(
            f"{kind:<12} {row['cases']:>5} {_fmt(row['miou'], '.3f'):>7} {_fmt(row['psnr'], '.2f'):>7} "
            f"{_fmt(row['ssim'], '.3f'):>7} {_fmt(row.get('clip_i'), '.2f'):>7} {_fmt(row.get('dino_i'), '.2f'):>7} "
            f"{_fmt(row['seconds_per_case'], '.2f'):>7}"
        )
    print(f"wrote {out / 'metrics.json'} and {out / 'contact_sheet.png'}")
    return 0


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CLIError(f"{what} must be comma-separated integers, got '{text}'") from None


def cmd_grid_search(args) -> int:
    from .evaluation.grid_search import grid_search
    from .io import check_output_folder

    check_output_folder(args.output, "--output")
    try:
        res = grid_search(
            args.cases_dir, args.output, model=args.model, timesteps=_int_list(args.timesteps, "--timesteps"),
            layers=_int_list(args.layers, "--layers") if args.layers else None, limit=args.limit, progress=not args.quiet,
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    b = res["best"]
    print(f"best (t, l) = ({b['timestep']}, {b['layer']}): mIoU {b['miou']:.3f} over {res['cases']} cases")
    print(f"use it with: refine ... --align-timestep {b['timestep']} --align-layer {b['layer']} (bench takes the same options)")
    print(f"wrote {Path(args.output) / 'grid.json'}, grid_heatmap.png, grid_marginals.png")
    return 0


def cmd_benchmark(args) -> int:
    from .perf.run import check_configs, format_results, run_benchmark
    from .pipelines.pipeline import resolve_device

    try:  # a bad or absent device is a usage error, found before any config is built
        resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        raise CLIError(f"--device {args.device}: {e}") from None
    from .io import check_output_path

    check_output_path(args.output, "--output")
    configs = check_configs(args.configs)  # each config runs in a child process: a bad name is found here
    res = run_benchmark(configs, args.output, args.repeats, args.cases, args.dtype, args.compile or False, args.device, args.attention)
    print(format_results(res, args.output))
    return 0


def cmd_serve(args) -> int:
    from .server.serve import run_from_args

    run_from_args(args)
    return 0


def cmd_batch(args) -> int:
    from .batch import format_summary, read_manifest, run_batch
    from .io import check_output_folder

    read_manifest(args.manifest)  # a bad manifest or output folder fails before the model loads
    check_output_folder(args.output, "--output")
    pipe = _load_pipeline(args.model, args.quiet)
    summary = run_batch(args.manifest, args.output, pipe, progress=not args.quiet)
    print(format_summary(summary))
    return 1 if summary["failed"] else 0


def cmd_demo(args) -> int:
    from .demo.run import run_demo
    from .io import check_output_folder

    check_output_folder(args.output, "--output")
    pipe = _load_pipeline(args.model, args.quiet)
    run_demo(pipe, Path(args.output))
    return 0


def cmd_train(args) -> int:
    from .training.train import load_train_config, train

    try:
        tc = load_train_config(args.config)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    try:  # a recipe whose parts do not fit or cannot be had (pretrained weights, init_from) is a usage error
        rec = train(tc, args.output, resume=args.resume, max_steps=args.max_steps, progress=not args.quiet)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(f"stopped at step {rec['step']}; weights in {Path(args.output) / 'weights'}")
    return 0


def cmd_plot(args) -> int:
    from .training.plot import plot_run

    out = plot_run(args.run_dir, args.output)
    print(f"wrote {out}")
    return 0


def cmd_show_pairs(args) -> int:
    from .data.pairs import show_pairs

    root = args.data_root if args.data_root and Path(args.data_root).is_dir() else None
    if args.mode == "multiview" and root is None:
        raise CLIError(f"--mode multiview needs multi-view photos: '{args.data_root}' is not a folder")
    out = show_pairs(args.mode, args.n, args.seed, args.output, size=args.size, data_root=root, warp=args.warp)
    print(f"wrote {out}")
    return 0


def cmd_make_cases(args) -> int:
    from .data.make_cases import make_cases

    subjects = [s.strip() for s in args.subjects.split(",")] if args.subjects else None
    paths = make_cases(args.source, args.output, args.seed, subjects=subjects, cases_per_subject=args.per_subject)
    print(f"wrote {len(paths)} cases to {args.output}")
    return 0


COMMANDS = {
    "refine": cmd_refine,
    "align": cmd_align,
    "bench": cmd_bench,
    "grid-search": cmd_grid_search,
    "benchmark": cmd_benchmark,
    "serve": cmd_serve,
    "batch": cmd_batch,
    "demo": cmd_demo,
    "train": cmd_train,
    "plot": cmd_plot,
    "show-pairs": cmd_show_pairs,
    "make-cases": cmd_make_cases,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    from .io import InputError

    try:
        seed = getattr(args, "seed", None)  # every command's --seed: the range the server and batch accept
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise CLIError(f"--seed must be an integer in 0..{MAX_SEED} (2^63-1), got {seed}")
        return COMMANDS[args.command](args)
    except (CLIError, InputError) as e:
        print(f"refine-by-align {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as e:
        print(f"refine-by-align {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
