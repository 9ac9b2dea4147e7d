"""What several commands share: the one-line usage error, the model loader's CLI wrapper, the alignment options."""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2
MAX_SEED = 2**63 - 1  # the same range as the server's form field and the batch manifest


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def load_model(model: str, quiet: bool, matcher_weights: str | None = None):
    from ..loading import load_pipeline

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


def print_notes(notes) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def add_alignment_options(p: argparse.ArgumentParser, t_flag: str = "--align-timestep", l_flag: str = "--align-layer") -> None:
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


def int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CLIError(f"{what} must be comma-separated integers, got '{text}'") from None
