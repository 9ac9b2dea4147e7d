"""Fixtures of the data tests: a tiny synthetic multi-view folder and the shared photo folder."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from refine_by_align.data.synthetic import render_object

# relative to the repository root: ../shared/data/dreambooth-train
DREAMBOOTH = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dreambooth-train").resolve()


def write_view(folder: Path, name: str, image: np.ndarray, mask: np.ndarray, ext: str = ".jpg") -> None:
    """Save a photo and a *soft* 0-255 mask (blurred edges), as the shared data does."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{name}{ext}", quality=95)
    soft = cv2.GaussianBlur(mask.astype(np.uint8) * 255, (5, 5), 1.5)
    Image.fromarray(soft, "L").save(folder / f"{name}_mask.png")


@pytest.fixture(scope="session")
def tiny_multiview(tmp_path_factory) -> Path:
    """ROOT/{alpha,beta}/{00,01}.jpg + _mask.png: 2 subjects x 2 views of a procedural object
    (the second view is the first one rotated and shifted), 160 x 128 px."""
    root = tmp_path_factory.mktemp("multiview")
    for s, subject in enumerate(("alpha", "beta")):
        img, m = render_object(np.random.default_rng(100 + s), size=128)
        for v in range(2):
            if v == 0:
                im2, m2 = img, m
            else:
                a = cv2.getRotationMatrix2D((64, 64), 15, 0.9)
                im2 = cv2.warpAffine(img, a, (128, 128), borderMode=cv2.BORDER_REFLECT)
                m2 = cv2.warpAffine(m.astype(np.uint8), a, (128, 128)) > 0
            canvas = np.full((128, 160, 3), 90, np.uint8)
            canvas[:, 16:144] = im2
            cm = np.zeros((128, 160), bool)
            cm[:, 16:144] = m2
            write_view(root / subject, f"{v:02d}", canvas, cm)
    return root


@pytest.fixture(scope="session")
def dreambooth_root() -> Path:
    if not DREAMBOOTH.is_dir():
        pytest.skip(f"shared photo folder {DREAMBOOTH} (../shared/data/dreambooth-train) is absent")
    return DREAMBOOTH
