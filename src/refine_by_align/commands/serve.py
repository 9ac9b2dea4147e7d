"""``refine-by-align serve``: the local web app and HTTP API (``server/``)."""

from __future__ import annotations

import argparse

HELP = "local web app + HTTP API (binds 127.0.0.1 unless --host says otherwise)"
EXAMPLE = "refine-by-align serve --model default --port 7860 --log-level warning   # then open http://127.0.0.1:7860/"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..server.settings import add_serve_arguments  # no FastAPI import at parse time

    add_serve_arguments(p)


def run(args) -> int:
    from ..server.serve import run_from_args

    run_from_args(args)
    return 0
