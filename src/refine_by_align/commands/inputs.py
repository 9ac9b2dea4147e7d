"""The inputs and outputs of ``refine`` and ``align``: every file checked before any model is loaded."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import common
from .common import CLIError


class _ReferenceAction(argparse.Action):
    """Repeated ``--reference`` / ``--reference-mask``: each mask belongs to the ``--reference``
    before it (one given before any reference, to the first). ``args.reference`` and
    ``args.reference_mask`` become lists of the same length (None where a reference has no mask)."""

    def __call__(self, parser, namespace, values, option_string=None):
        refs = list(getattr(namespace, "reference", None) or [])
        masks = list(getattr(namespace, "reference_mask", None) or [])
        pending = getattr(namespace, "_pending_reference_mask", None)
        if self.dest == "reference":
            refs.append(values)
            masks.append(pending)
            namespace._pending_reference_mask = None
        elif not refs:
            if pending is not None:
                _refuse(namespace, f"two --reference-mask before the first --reference ('{pending}', '{values}')")
            namespace._pending_reference_mask = values
        elif masks[-1] is not None:
            _refuse(namespace, f"two --reference-mask for the reference '{refs[-1]}' ('{masks[-1]}', '{values}'): give each --reference-mask after its --reference")
        else:
            masks[-1] = values
        namespace.reference, namespace.reference_mask = refs, masks


def _refuse(namespace, message: str) -> None:
    """Keep the first mistake in the order of --reference / --reference-mask, said as one line when
    the inputs are read (:func:`read_inputs`, before any file is), not as argparse's usage block."""
    if getattr(namespace, "_reference_error", None) is None:
        namespace._reference_error = message


def reference_order_error(args) -> str | None:
    """The mistake :class:`_ReferenceAction` found in the order of the references and their masks, or None."""
    return getattr(args, "_reference_error", None)


def add_input_arguments(p: argparse.ArgumentParser, several: bool = False) -> None:
    """The input options; ``several``: ``--reference`` may be repeated (each with an optional
    ``--reference-mask`` after it)."""
    p.add_argument("--image", required=True, help="the generated image with artifacts")
    p.add_argument("--mask", required=True, help="artifact mask: the artifacts in white on black (pixels at half range or brighter; a 0 / 1 mask: nonzero pixels), at most half the image")
    if several:
        p.add_argument("--reference", required=True, action=_ReferenceAction,
                       help="reference photo of the same object; repeat it for several references (each one is aligned, and per pixel the best-matching one is used)")
        p.add_argument("--reference-mask", action=_ReferenceAction,
                       help="object mask of the --reference before it (default: its alpha, else estimated from the photo)")
    else:
        p.add_argument("--reference", required=True, help="reference photo of the same object")
        p.add_argument("--reference-mask", help="object mask of the reference (default: its alpha, else estimated from the photo)")
    p.add_argument("--model", default="default", help=f"{common.MODEL_HELP}, or a preset name: default | tiny | paper (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed, an integer in 0..2^63-1 (default: %(default)s)")
    common.add_dtype_option(p)


def read_inputs(args):
    """Load and check every input file before any model is loaded: errors come first and alone."""
    from ..io import load_inputs

    order = reference_order_error(args)  # (two --reference-mask for one --reference)
    if order is not None:
        raise CLIError(order)

    # every header first (sizes compared before any pixel is decoded), then the pixels
    reference, reference_mask = args.reference, args.reference_mask
    if isinstance(reference, list) and len(reference) == 1:  # one reference: plain values, as without the repeat
        reference, reference_mask = reference[0], reference_mask[0]
    files = {"image": args.image, "mask": args.mask, "reference": reference, "reference_mask": reference_mask}
    return load_inputs(files, labels={"reference_mask": "reference mask"})


def check_output(path: str, what: str = "output", mode: str = "RGB") -> Path:
    """An output path checked before any work: not a folder, an extension naming a format that can
    hold the picture (``mode``; "L": a mask, which a lossy JPEG would blur)."""
    from PIL import Image

    from ..io import encode_image, output_format

    p = Path(path)
    if p.exists() and p.is_dir():
        raise CLIError(f"{what} '{path}': is a folder; give a file name (e.g. {p / 'out.png'})")
    fmt = output_format(p, what)  # (an unknown extension: one line naming the formats)
    if mode == "L" and fmt == "JPEG":
        raise CLIError(f"{what} '{path}': a mask written as JPEG comes back with grey, blurred edges; use .png")
    encode_image(Image.new(mode, (8, 8)), p, what)  # a format that cannot hold the picture is found now
    return p


def input_files(args) -> list[tuple[str, str]]:
    """(option, path) of every input file of a refine / align call."""
    files = [("--image", args.image), ("--mask", args.mask)]
    refs = args.reference if isinstance(args.reference, list) else [args.reference]
    masks = args.reference_mask if isinstance(args.reference_mask, list) else [args.reference_mask]
    files += [("--reference", r) for r in refs]
    files += [("--reference-mask", m) for m in masks if m]
    return files


def check_outputs(inputs: list[tuple[str, str]], outputs: list[tuple[str, Path | None]]) -> None:
    """Before any work: no output may be an input file or another output of the same call (symlinks,
    ``..`` and hard links included), and every output must be writable where it is going."""
    from ..io import check_output_path, same_file

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


def check_alignment_options(pipe, timestep: int | None, layer: int | None) -> None:
    """The alignment pass's (t, l) against the loaded model's ranges, before any computation. The messages
    name --alignment-timestep / --alignment-layer whichever spelling was used."""
    n = pipe.model.cfg.num_train_timesteps
    if timestep is not None and not 0 <= timestep < n:
        raise CLIError(f"--alignment-timestep {timestep} is out of range 0..{n - 1} (this model's timesteps)")
    n_layers = len(pipe.model.cross_attention_layers)
    if layer is not None and not 0 <= layer < n_layers:
        raise CLIError(f"--alignment-layer {layer} is out of range 0..{n_layers - 1} (this model's cross-attention layers)")
