"""``refine-by-align demo``: refine the shipped examples (and, when present, a case made from the
photos in ../shared/data/dreambooth-train), writing results and side-by-side pictures."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..data.readers import resolve_data_root
from ..evaluation.cases import load_case
from ..evaluation.metrics import masked_psnr
from ..io import save_image_atomic
from ..visualize import compare_picture
from .examples import EXAMPLES_DIR

__all__ = ["run_demo", "SHARED_PHOTOS"]

SHARED_PHOTOS = Path("../shared/data/dreambooth-train")  # (from the repository root or the current folder: resolve_data_root)


def _case_dirs(tmp: Path) -> list[Path]:
    dirs = sorted(p for p in EXAMPLES_DIR.iterdir() if (p / "image.png").exists())
    photos = resolve_data_root(SHARED_PHOTOS)
    if photos.is_dir():
        from ..data.make_cases import make_cases

        dirs += make_cases(photos, tmp / "photos", seed=0, subjects=["backpack"], cases_per_subject=1)[:2]
    else:
        print(f"(no photos at {SHARED_PHOTOS}: running the rendered examples only)")
    return dirs


def _summary_line(name: str, seconds: float, case, result) -> str:
    """One line per example that says what its figures mean: the masked PSNR (inside the artifact
    mask) of the refined image and of the untouched input, both against the example's artifact-free
    target, and the change (positive: the refinement brought the masked part closer to the target)."""
    line = f"{name}: {seconds:.2f} s"
    if case.target is not None:
        tgt = np.asarray(case.target)
        after = masked_psnr(np.asarray(result), tgt, case.mask)
        before = masked_psnr(np.asarray(case.image), tgt, case.mask)
        verdict = "closer to" if after > before else "further from" if after < before else "as close to"
        line += (
            f"; masked PSNR vs the artifact-free target: {after:.1f} dB after, {before:.1f} dB before "
            f"({after - before:+.1f} dB: the masked part is {verdict} the target)"
        )
    return line


def _note_lines(notes: list[str], seen: set[str]) -> list[str]:
    """The pipeline's notes on one example that the demo has not printed yet (a fallback such as
    the missing ALIKED weights, which explains a weaker result on a fresh clone, is said once)."""
    lines = [f"  note: {n}" for n in notes if n not in seen]
    seen.update(notes)
    return lines


def run_demo(pipe, output: Path) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    written, seen = [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for case_dir in _case_dirs(Path(tmp)):
            case = load_case(case_dir)
            name = case.id if case_dir.parent == EXAMPLES_DIR else f"photo-{case.id}"
            res = pipe(case.image, case.mask, case.reference, case.reference_mask, seed=0)
            out = output / f"{name}.png"
            save_image_atomic(res.image, out)
            save_image_atomic(compare_picture(case.image, case.mask, case.reference, res), output / f"{name}.compare.png")
            print(_summary_line(name, res.timings["total"], case, res.image))
            for line in _note_lines(res.notes, seen):
                print(line)
            written.append(out)
    print(f"outputs in {output.resolve()}/ (NAME.png = refined image, NAME.compare.png = input | reference + alignment | result)")
    return written
