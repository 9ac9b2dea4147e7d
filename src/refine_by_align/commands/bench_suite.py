"""``refine-by-align bench-suite``: rebuild the validation suite's case sets from the multi-view photos,
score the shipped pipeline (or another model) on each, and compare the run with an earlier one case by case."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import MODEL_HELP, CLIError

HELP = "quality: the validation suite (the case sets settings are chosen and checked on), optionally against an earlier run"
EXAMPLE = "refine-by-align bench-suite --source ../shared/data/dreambooth-train --cases suite-cases/ --output runs/mine --compare runs/main"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="../shared/data/dreambooth-train", help="SUBJECT/NN.jpg + NN_mask.png photo folder the sets are built from (default: %(default)s)")
    p.add_argument("--cases", default="suite-cases", help="where the case sets are (built where missing; default: %(default)s)")
    p.add_argument("--output", required=True, help="this run's folder: NAME/metrics.json per set and suite.json (a set already scored there is not run again)")
    p.add_argument("--sets", default="all", help="comma-separated set names, or 'all' (default): val, val2, val3, val4, trsub, fresh8, fresh8b")
    p.add_argument("--model", default=None, help=f"{MODEL_HELP} or preset (default: the shipped model)")
    p.add_argument("--compare", help="an earlier run's folder: each set's masked PSNR change, case by case")


def _print_run(res: dict) -> None:
    print(f"{'set':<8} {'role':<7} {'cases':>5}  masked PSNR: ALL / affine / nonrigid / multiview   field error, px: affine / nonrigid")
    for name, row in res["sets"].items():
        summ = row["summary"]
        kinds = " / ".join(f"{summ[k]['psnr']:.2f}" if k in summ else "-" for k in ("ALL", "affine", "nonrigid", "multiview"))
        fields = " / ".join(f"{summ[k]['field_px']:.3f}" if summ.get(k, {}).get("field_px") is not None else "-" for k in ("affine", "nonrigid"))
        print(f"{name:<8} {row['role']:<7} {row['cases']:>5}  {kinds:<45}  {fields}")
    print("mean over the cases: " + ", ".join(f"{r} {v:.2f}" for r, v in res["psnr_by_role"].items() if v is not None))


def _print_comparison(cmp: dict, before: str) -> None:
    print(f"\nagainst {before} (masked PSNR, dB):")
    for name, row in cmp["sets"].items():
        largest = ", ".join(f"{m['case']} {m['change']:+.2f}" for m in row["largest"])
        print(f"{name:<8} {row['role']:<7} {row['cases']:>3} cases  {row['before']:.2f} -> {row['after']:.2f} ({row['change']:+.3f}; {row['up']} up, {row['down']} down{'; ' + largest if largest else ''})")
    for key, row in cmp["pooled"].items():
        if row["cases"]:
            print(f"pooled, {key}: {row['change']:+.4f} dB over {row['cases']} cases")
    if cmp["missing"]:
        print(f"not in both runs: {', '.join(cmp['missing'])}")


def run(args) -> int:
    from ..data.readers import DatasetError
    from ..evaluation.suite import SuiteMismatchError, build_suite, compare_runs, run_suite, suite_sets

    try:
        sets = suite_sets(args.sets)
    except ValueError as e:
        raise CLIError(f"--sets: {e}") from None
    from ..io import check_output_apart

    check_output_apart(args.output, {"cases": args.cases})  # (the built cases' true correspondences would be overwritten)
    if args.compare and not Path(args.compare).is_dir():
        raise CLIError(f"--compare '{args.compare}': not a folder (an earlier bench-suite --output)")
    from ..data.readers import resolve_data_root

    try:
        build_suite(resolve_data_root(args.source), args.cases, sets)
    except DatasetError as e:
        raise CLIError(f"--source '{args.source}': {e} (the suite is built from the multi-view photos, ../shared/data/dreambooth-train)") from None
    try:
        res = run_suite(args.cases, args.output, sets, model=args.model, progress=not args.quiet)
    except SuiteMismatchError as e:
        raise CLIError(f"--output: {e}") from None
    _print_run(res)
    if args.compare:
        _print_comparison(compare_runs(args.compare, args.output, sets), args.compare)
    print(f"wrote {Path(args.output) / 'suite.json'} (and each set's metrics.json, contact sheet and outputs)")
    return 0
