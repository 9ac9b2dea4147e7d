"""The ``refine-by-align`` command line: a dispatch table over ``commands/`` (each module owns its options,
``add_arguments(parser)``, and its work, ``run(args)``). Every user error ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys

from .commands import align, batch, bench, benchmark, demo, detect, grid_search, make_cases, plot, refine, serve, show_pairs, train
from .commands.common import EXIT_USAGE, MAX_SEED, CLIError

__all__ = ["main", "build_parser", "COMMANDS", "EXAMPLES", "CLIError"]

# subcommand name -> its module (HELP, EXAMPLE, add_arguments, run), in the order --help lists them
COMMANDS = {
    "refine": refine, "align": align, "bench": bench, "grid-search": grid_search, "benchmark": benchmark,
    "serve": serve, "batch": batch, "demo": demo, "train": train, "plot": plot, "show-pairs": show_pairs,
    "make-cases": make_cases, "detect": detect,
}
EXAMPLES = {name: module.EXAMPLE for name, module in COMMANDS.items()}  # one example per subcommand, shown at the end of its --help


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refine-by-align",
        description="Repair localized artifacts in a generated image from a reference photo (Refine-by-Align).",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        p = sub.add_parser(
            name, help=module.HELP, epilog="example:\n  " + module.EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    from .io import InputError

    try:
        seed = getattr(args, "seed", None)  # every command's --seed: the range the server and batch accept
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise CLIError(f"--seed must be an integer in 0..{MAX_SEED} (2^63-1), got {seed}")
        return COMMANDS[args.command].run(args)
    except (CLIError, InputError, FileNotFoundError) as e:
        print(f"refine-by-align {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
