"""What several commands share: the one-line usage error, the model loader's CLI wrapper, the alignment options,
the deprecated spellings of renamed options and commands."""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2
MAX_SEED = 2**63 - 1  # io.MAX_SEED, written here too so that parsing the command line does not import NumPy and Pillow


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


#: ``--dtype``: the weights' precision on the device. bf16 runs the default model's denoising about
#: 25% faster on a CPU with native bf16 (AVX-512 BF16 or AMX; README, "Speed"), the same results
#: within a grey level; slower on a CPU without it.
DTYPES = ("fp32", "bf16")


def add_dtype_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="the weights' precision: fp32, or bf16 (faster on CPUs with native bf16, AVX-512 BF16 / AMX; default: %(default)s)")


def load_model(model: str, quiet: bool, matcher_weights: str | None = None, dtype: str = "fp32"):
    import torch

    from ..loading import load_pipeline

    if dtype not in DTYPES:
        raise CLIError(f"--dtype {dtype}: choose {' or '.join(DTYPES)}")
    pipe = load_pipeline(model, dtype=torch.bfloat16 if dtype == "bf16" else None)  # an unusable model: one InputError line, exit 2
    if pipe.random_weights:
        print(
            f"WARNING: model '{model}' has no trained weights: running with RANDOM weights, the output is a "
            "stand-in, not a refinement.",
            file=sys.stderr,
        )
    if dtype == "bf16":
        from ..perf.ceiling import native_bf16

        if not native_bf16(pipe.device):
            where = "a CPU without native bf16 (no AMX or AVX-512 BF16)" if pipe.device.type == "cpu" else f"a {pipe.device.type} device without bf16 support"
            print(f"note: --dtype bf16 on {where}: PyTorch emulates it, far slower than fp32", file=sys.stderr)
    # the sampler's bar only on a terminal (None: tqdm's own check): in a log file its carriage
    # returns run it into the next printed line
    pipe.set_progress_bar_config(disable=True if quiet else None, leave=False, desc="refine")
    if matcher_weights is not None:
        pipe.require_matcher(matcher_weights, "--matcher-weights")
    return pipe


def load_matcher(weights: str):
    """The ALIKED matcher of ``--matcher-weights`` (a file, a folder or a weights name), loaded
    where a command is given them and before its work: weights that cannot be loaded are one
    usage error, not looked past to the default folders."""
    from ..models.aliked import load_aliked

    matcher, reason = load_aliked(weights)
    if matcher is None:
        raise CLIError(f"--matcher-weights '{weights}': cannot load the ALIKED matcher: {reason}")
    return matcher


#: What every command's ``--model`` takes, the start of its help (each command adds its default).
MODEL_HELP = "model folder (a saved model, a training run or one of its checkpoints)"


def record_beside(output):
    """The record's path beside ``output`` (``NAME.json``), checked before any work: it may replace
    an earlier record only (provenance.check_record_path)."""
    from ..io import InputError
    from ..provenance import check_record_path, record_path

    path = record_path(output)
    try:
        check_record_path(path)
    except InputError as e:
        raise CLIError(str(e)) from None
    return path


def write_record_beside(path, parts: dict, outputs) -> None:
    """Write a command's record (``parts``: command, inputs, settings, result) with the
    ``outputs`` it wrote ((flag, path) pairs, hashed as written); a record that cannot be written
    is one line (the outputs stand)."""
    from ..provenance import record, write_record

    rec = record(parts["command"], parts["inputs"], parts["settings"], parts["result"], {flag.lstrip("-").removeprefix("the ").removesuffix(" picture"): p for flag, p in outputs})
    try:
        write_record(path, rec)
    except OSError as e:
        raise CLIError(f"the outputs were written, but not their record '{path}': {e.strerror or e}") from None


def model_used(pipe) -> dict:
    """The model a run used, for its record: what it was loaded as and its fingerprint (a sample
    of every weight: batch.model_fingerprint)."""
    from ..batch import model_fingerprint

    return {"model": getattr(pipe, "model_name", None), "model_fingerprint": model_fingerprint(pipe)}


def matchers_used(pipe, matchers: str | None, dense: bool) -> dict:
    """The dense alignment's matchers and the ALIKED weights' file as the run used them (None
    where no dense alignment ran; ``matchers`` as the command line asked)."""
    if not dense:
        return {"matchers": None, "matcher_weights": None}
    used = pipe.alignment_matchers(matchers)
    return {"matchers": used["matchers"], "matcher_weights": used["matcher_weights"]}


def print_notes(notes) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def deprecation(old: str, new: str) -> None:
    """The one line an old option or command name prints (kept for one release, then removed)."""
    print(f"refine-by-align: {old} is deprecated, use {new} (the old name goes in the next release)", file=sys.stderr)


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option, kept for one release: stores into the new option's ``dest``
    (one attribute for both spellings) and prints one deprecation line each time it is used."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecation(option_string, self.new)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(p: argparse.ArgumentParser, old: str, new: argparse.Action) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of the option ``new`` (as returned by ``add_argument``)."""
    p.add_argument(
        old, dest=new.dest, type=new.type, nargs=new.nargs, choices=new.choices, metavar=new.metavar,
        default=argparse.SUPPRESS, help=argparse.SUPPRESS, action=DeprecatedAlias, new=new.option_strings[0],
    )


#: Where --matcher-weights' names (and the default) are looked for: every command's help says it alike.
MATCHER_WEIGHTS_WHERE = "looked up in $REFINE_BY_ALIGN_WEIGHTS/aliked, then in ../shared/weights/aliked from the current folder and from the repository"


def add_alignment_options(p: argparse.ArgumentParser, deprecated: tuple[str, str] = ("--align-timestep", "--align-layer")) -> None:
    """--alignment, --matchers, --matcher-weights, --alignment-timestep and --alignment-layer
    (``args.alignment_timestep``, ``args.alignment_layer``); ``deprecated``: the command's old
    spellings of the last two, still accepted for one release."""
    p.add_argument(
        "--alignment", choices=("dense", "attention"), default=None,
        help="dense (default): a per-pixel field from point matches, the region = the mask pushed through it; "
        "attention: the paper's Algorithm 1 region on the 16x16 token grid",
    )
    p.add_argument(
        "--matchers", default=None,
        help="the dense field's match sources joined by '+': sift, aliked, attention (default: sift+aliked where "
        "the ALIKED weights are found, else sift)",
    )
    p.add_argument("--matcher-weights", default=None, help=f"ALIKED weights: a .safetensors file, a folder, or a name (default: aliked-n16; aliked-t16: a faster alignment, slightly less precise, README), {MATCHER_WEIGHTS_WHERE}; where none is found the alignment uses SIFT alone and says so")
    timestep = p.add_argument(
        "--alignment-timestep", type=int, metavar="T", help="timestep t of the attention pass (default: the model's; see grid-search)"
    )
    layer = p.add_argument("--alignment-layer", type=int, metavar="L", help="cross-attention layer l of the attention pass (default: the model's)")
    for old, new in zip(deprecated, (timestep, layer)):
        add_deprecated_alias(p, old, new)


def int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CLIError(f"{what} must be comma-separated integers, got '{text}'") from None
