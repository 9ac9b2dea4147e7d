"""The ``refine-by-align`` command line: a dispatch table over ``commands/`` (each module owns its options,
``add_arguments(parser)``, and its work, ``run(args)``). Every user error ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .commands import align, batch, bench_quality, bench_speed, bench_suite, convert_matcher, demo, derive_cases, detect, grid_search, make_cases, plot, refine, serve, show_pairs, train
from .commands.common import EXIT_USAGE, MAX_SEED, CLIError, deprecation

__all__ = ["main", "build_parser", "COMMANDS", "DEPRECATED_COMMANDS", "EXAMPLES", "CLIError"]

# subcommand name -> its module (HELP, EXAMPLE, add_arguments, run), in the order --help lists them
COMMANDS = {
    "refine": refine, "align": align, "bench-quality": bench_quality, "bench-suite": bench_suite, "grid-search": grid_search, "bench-speed": bench_speed,
    "serve": serve, "batch": batch, "demo": demo, "train": train, "plot": plot, "show-pairs": show_pairs,
    "make-cases": make_cases, "derive-cases": derive_cases, "detect": detect, "convert-matcher": convert_matcher,
}
# old command name -> its new name: still accepted for one release, with one deprecation line on stderr
DEPRECATED_COMMANDS = {"bench": "bench-quality", "benchmark": "bench-speed"}
EXAMPLES = {name: module.EXAMPLE for name, module in COMMANDS.items()}  # one example per subcommand, shown at the end of its --help


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refine-by-align",
        description="Repair localized artifacts in a generated image from a reference photo (Refine-by-Align).",
        epilog="deprecated command names (the next release drops them):\n  "
        + ", ".join(f"{old} -> {new}" for old, new in DEPRECATED_COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        p = sub.add_parser(
            name, help=module.HELP, epilog="example:\n  " + module.EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        # -q after the command too (SUPPRESS: absent here, the top level's value stands)
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
        module.add_arguments(p)
    return parser


def _renamed(argv: list[str]) -> list[str]:
    """``argv`` with a deprecated command name replaced by its new one (one line on stderr says so). The
    command is the first word not starting with '-': the top level takes flags only (-q, -h)."""
    i = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if i is None or argv[i] not in DEPRECATED_COMMANDS:
        return argv
    deprecation(argv[i], DEPRECATED_COMMANDS[argv[i]])
    return [*argv[:i], DEPRECATED_COMMANDS[argv[i]], *argv[i + 1 :]]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_renamed(sys.argv[1:] if argv is None else list(argv)))
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    from .allocator import keep_freed_memory
    from .io import InputError, check_matchers
    from .loading import check_model_name

    keep_freed_memory()  # freed arrays kept for reuse, not faulted in again (allocator.py)

    try:
        seed = getattr(args, "seed", None)  # every command's --seed: the range the server and batch accept
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise CLIError(f"--seed must be an integer in 0..{MAX_SEED} (2^63-1), got {seed}")
        # a model name that names nothing, and match sources that do not exist, are said before
        # any command's heavy imports (torch, diffusers: several seconds)
        model = getattr(args, "model", None)
        if isinstance(model, str):
            check_model_name(model)
        if getattr(args, "matchers", None) is not None:
            check_matchers(args.matchers, "--matchers")
        return COMMANDS[args.command].run(args)
    except (CLIError, InputError, FileNotFoundError) as e:
        print(f"refine-by-align {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
