"""``refine-by-align demo``: refine the shipped examples (and, when present, a case made from the
photos in ../shared/data/dreambooth-train), writing results and side-by-side pictures."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..evaluation.cases import load_case
from ..evaluation.metrics import masked_psnr
from ..io import save_image_atomic
from ..visualize import compare_picture
from .examples import EXAMPLES_DIR

__all__ = ["run_demo", "SHARED_PHOTOS"]

SHARED_PHOTOS = Path("../shared/data/dreambooth-train")


def _case_dirs(tmp: Path) -> list[Path]:
    dirs = sorted(p for p in EXAMPLES_DIR.iterdir() if (p / "image.png").exists())
    if SHARED_PHOTOS.is_dir():
        from ..data.make_cases import make_cases

        dirs += make_cases(SHARED_PHOTOS, tmp / "photos", seed=0, subjects=["backpack"], cases_per_subject=1)[:2]
    else:
        print(f"(no photos at {SHARED_PHOTOS}: running the rendered examples only)")
    return dirs


def run_demo(pipe, output: Path) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for case_dir in _case_dirs(Path(tmp)):
            case = load_case(case_dir)
            name = case.id if case_dir.parent == EXAMPLES_DIR else f"photo-{case.id}"
            res = pipe(case.image, case.mask, case.reference, case.reference_mask, seed=0)
            out = output / f"{name}.png"
            save_image_atomic(res.image, out)
            save_image_atomic(compare_picture(case.image, case.mask, case.reference, res), output / f"{name}.compare.png")
            line = f"{name}: {res.timings['total']:.2f} s"
            if case.target is not None:
                tgt = np.asarray(case.target)
                line += (
                    f", masked PSNR {masked_psnr(np.asarray(res.image), tgt, case.mask):.2f} dB "
                    f"(input {masked_psnr(np.asarray(case.image), tgt, case.mask):.2f} dB)"
                )
            print(line)
            written.append(out)
    print(f"outputs in {output.resolve()}/ (NAME.png = refined image, NAME.compare.png = input | reference + alignment | result)")
    return written
