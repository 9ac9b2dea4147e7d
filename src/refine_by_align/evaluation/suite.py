"""The validation suite: the case sets the shipped settings were chosen and checked on (MODEL_CARD.md),
defined once so that anyone can rebuild them from the multi-view photos and score a change against
another run, set by set and case by case.

Settings are chosen on the "decide" sets (other photos, masks and warps of the four validation
subjects) and checked on the "check" sets (the validation subjects' first set, training subjects no
choice looked at, and eight more training subjects used for nothing else). The held-out subjects of
the project's own evaluation are not among them; build for those."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..data.readers import VALIDATION_SUBJECTS

__all__ = ["CaseSet", "SUITE", "TRAINING_CHECK_SUBJECTS", "UNUSED_SUBJECTS", "suite_sets", "build_suite", "run_suite", "compare_runs", "SuiteMismatchError"]

#: Training subjects whose cases check a choice made on the validation subjects ("trsub").
TRAINING_CHECK_SUBJECTS = ("bear_plushie", "cat", "duck_toy", "fancy_boot", "monster_toy", "shiny_sneaker", "teapot", "vase")
#: Training subjects no choice was made on or checked against before the last sets ("fresh8", "fresh8b").
UNUSED_SUBJECTS = ("dog", "dog2", "dog5", "dog7", "dog8", "grey_sloth_plushie", "pink_sunglasses", "poop_emoji")
ROLES = ("decide", "check")


@dataclass(frozen=True)
class CaseSet:
    """One case set of the suite: ``make-cases --seed SEED --per-subject N --subjects ...``."""

    name: str  # the folder name under the suite's case root (and in MODEL_CARD.md)
    seed: int  # make_cases' seed: which photos, masks, artifacts and warps
    per_subject: int  # cases per subject; kinds rotate affine, nonrigid, multiview
    subjects: tuple[str, ...]  # the photo folder's subjects it draws from
    role: str  # "decide": settings are chosen on it; "check": it only tells whether a choice holds


SUITE: tuple[CaseSet, ...] = (
    CaseSet("val", 0, 6, VALIDATION_SUBJECTS, "check"),
    CaseSet("val2", 1, 6, VALIDATION_SUBJECTS, "decide"),
    CaseSet("val3", 2, 6, VALIDATION_SUBJECTS, "decide"),
    CaseSet("val4", 3, 6, VALIDATION_SUBJECTS, "decide"),
    CaseSet("trsub", 7, 3, TRAINING_CHECK_SUBJECTS, "check"),
    CaseSet("fresh8", 11, 3, UNUSED_SUBJECTS, "check"),
    CaseSet("fresh8b", 12, 6, UNUSED_SUBJECTS, "check"),
)


def suite_sets(names: str | Sequence[str] | None = None, suite: Sequence[CaseSet] = SUITE) -> list[CaseSet]:
    """The sets named (a comma-separated string or a list; None or "all": every one), in the suite's
    order. Raises ValueError naming an unknown set and the known ones."""
    if names is None or names == "all":
        return list(suite)
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    known = {s.name: s for s in suite}
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise ValueError(f"unknown case set(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(known)} or 'all'")
    return [s for s in suite if s.name in wanted]


def build_suite(source: str | os.PathLike, cases_root: str | os.PathLike, sets: Sequence[CaseSet] = SUITE) -> dict[str, Path]:
    """Each set's case folder under ``cases_root`` (``cases_root/NAME``), built from the multi-view
    photo folder ``source`` by :func:`~refine_by_align.data.make_cases.make_cases` unless it already
    holds the set's number of cases (a set cut short is built again; the same seed writes the same
    cases), each affine and nonrigid one with its ``true_field.npz`` (a set built before those
    were written is built again: the same cases, with them). A subject missing from ``source``
    raises make_cases' DatasetError, naming it."""
    from ..data.make_cases import make_cases
    from ..io import InputError
    from .cases import list_case_dirs

    folders = {}
    for s in sets:
        folder = Path(cases_root) / s.name
        try:
            held = list_case_dirs(folder)
        except InputError:  # (no folder yet, or none of its cases)
            held = []
        without_truth = [d for d in held if not d.name.endswith("_multiview") and not (d / "true_field.npz").is_file()]
        if len(held) != s.per_subject * len(s.subjects) or without_truth:
            make_cases(source, folder, seed=s.seed, subjects=list(s.subjects), cases_per_subject=s.per_subject)
        folders[s.name] = folder
    return folders


def run_suite(
    cases_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    sets: Sequence[CaseSet] = SUITE,
    method: str = "refine-by-align",
    model: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``method`` on each set (``cases_root/NAME`` -> ``run_dir/NAME``, as ``bench-quality``
    does: outputs, metrics.json, contact sheet). A set whose metrics.json is already there is read
    back, not run again (an interrupted run resumes), but only into a run of the same method and
    model: ``run_dir/suite.json`` names them from the first set on, and a folder that holds another
    method's or model's results raises :class:`SuiteMismatchError` instead of mixing them. Writes
    ``run_dir/suite.json`` after each set: each set's role, case count and summary, and the mean
    masked PSNR over the cases of each role; returns it."""
    from .bench import run_bench, write_json_atomic

    run_dir = Path(run_dir)
    _check_same_run(run_dir, sets, method, model)
    out: dict[str, Any] = {"method": method, "model": model, "sets": {}}
    psnr_by_role: dict[str, list[float]] = {r: [] for r in ROLES}
    for s in sets:
        metrics = run_dir / s.name / "metrics.json"
        if metrics.exists():
            res = json.loads(metrics.read_text())
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic({**out, "psnr_by_role": None}, run_dir / "suite.json")  # (names the run before its first set is written)
            res = run_bench(Path(cases_root) / s.name, run_dir / s.name, method=method, model=model, progress=progress)
        out["sets"][s.name] = {"role": s.role, "seed": s.seed, "cases": len(res["cases"]), "summary": res["summary"]}
        psnr_by_role[s.role] += [c["psnr"] for c in res["cases"] if c.get("psnr") is not None]
    out["psnr_by_role"] = {r: (sum(v) / len(v) if v else None) for r, v in psnr_by_role.items()}
    write_json_atomic(out, run_dir / "suite.json")
    return out


class SuiteMismatchError(ValueError):
    """A run folder holds another method's or model's results (:func:`run_suite` does not mix them)."""


def _check_same_run(run_dir: Path, sets: Sequence[CaseSet], method: str, model: str | None) -> None:
    """Raise :class:`SuiteMismatchError` where ``run_dir`` already holds results of another method
    or model: its suite.json's, or (a folder written without one) a set's metrics.json's
    (:func:`~.bench.results_owner`)."""
    from .bench import results_owner, same_model

    def name(m, mo):
        return f"method '{m}' with model '{mo or 'default'}'"

    suite = run_dir / "suite.json"
    if suite.exists():
        prev = json.loads(suite.read_text())
        if prev.get("method") != method or not same_model(prev.get("model"), model):  # (no --model is the default model)
            raise SuiteMismatchError(
                f"{run_dir} holds a run of {name(prev.get('method'), prev.get('model'))}, not {name(method, model)}: "
                "give a new --output folder (its results would be mixed with this run's)"
            )
        return
    for s in sets:
        metrics = run_dir / s.name / "metrics.json"
        found = results_owner(metrics)
        if found is not None and (found[0] != method or not same_model(found[1], model)):
            raise SuiteMismatchError(f"{metrics} holds results of {name(*found)}, not {name(method, model)}: give a new --output folder")


def compare_runs(before: str | os.PathLike, after: str | os.PathLike, sets: Sequence[CaseSet] = SUITE, tolerance: float = 1e-6) -> dict[str, Any]:
    """Masked PSNR of two runs (``run_suite`` folders) case by case on the sets both hold: per set
    the cases compared, both means, the change, how many cases went up and down by more than
    ``tolerance`` dB and the largest moves; pooled over every compared case and per role. A set
    missing from either run is listed under "missing"."""
    out: dict[str, Any] = {"sets": {}, "missing": []}
    pooled: dict[str, list[float]] = {"all": [], **{r: [] for r in ROLES}}
    for s in sets:
        paths = [Path(root) / s.name / "metrics.json" for root in (before, after)]
        if not all(p.exists() for p in paths):
            out["missing"].append(s.name)
            continue
        a, b = ({c["case"]: c["psnr"] for c in json.loads(p.read_text())["cases"] if c.get("psnr") is not None} for p in paths)
        common = [k for k in a if k in b]
        if not common:
            out["missing"].append(s.name)
            continue
        moves = sorted(((b[k] - a[k], k) for k in common), key=lambda m: -abs(m[0]))
        deltas = [d for d, _ in moves]
        out["sets"][s.name] = {
            "role": s.role, "cases": len(common),
            "before": sum(a[k] for k in common) / len(common), "after": sum(b[k] for k in common) / len(common),
            "change": sum(deltas) / len(deltas), "up": sum(d > tolerance for d in deltas), "down": sum(d < -tolerance for d in deltas),
            "largest": [{"case": k, "change": d} for d, k in moves[:3] if abs(d) > tolerance],
        }  # fmt: skip
        pooled["all"] += deltas
        pooled[s.role] += deltas
    out["pooled"] = {k: {"cases": len(v), "change": (sum(v) / len(v) if v else None)} for k, v in pooled.items()}
    return out
