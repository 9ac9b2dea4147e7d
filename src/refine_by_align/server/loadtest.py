"""The load test lives in :mod:`refine_by_align.perf.loadtest` (speed tooling); this name keeps
``python -m refine_by_align.server.loadtest`` working."""

import sys

from ..perf.loadtest import main, run_load_test

__all__ = ["main", "run_load_test"]

if __name__ == "__main__":
    sys.exit(main())
