import os
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from refine_by_align.data.synthetic import render_object

torch.set_num_threads(min(2, os.cpu_count() or 1))

class ModelCalled(Exception):
    """Raised by the :func:`stub_cli_model` stand-in: every check passed and the call would run;
    its argument is the keyword arguments the pipeline got."""


class _StubPipe:
    random_weights = False
    model = SimpleNamespace(cfg=SimpleNamespace(num_train_timesteps=1000), cross_attention_layers=[f"l{i}" for i in range(16)])

    def __call__(self, *args, **kwargs):
        raise ModelCalled(kwargs)

    def align(self, *args, **kwargs):
        raise ModelCalled(kwargs)


@pytest.fixture
def stub_cli_model(monkeypatch):
    """The commands' model loader returns a stand-in pipeline (1000 timesteps, 16 attention layers)
    that raises ``ModelCalled(kwargs)`` when called; the fixture's value is that exception class."""
    from refine_by_align.commands import common as cli_common

    monkeypatch.setattr(cli_common, "load_model", lambda *a, **k: _StubPipe())
    return ModelCalled


@pytest.fixture(scope="session")
def write_cli_inputs():
    """``write(folder)``: a 32x24 random image.png, its mask.png (an 12x8 box) and a 20x20 random
    reference.png, the smallest inputs a CLI command accepts; returns the folder."""

    def write(folder):
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / "image.png")
        mask = np.zeros((24, 32), np.uint8)
        mask[6:14, 8:20] = 255
        Image.fromarray(mask).save(folder / "mask.png")
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "reference.png")
        return folder

    return write


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_PHOTOS = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "dreambooth-train"))


@pytest.fixture(scope="session")
def tiny_pipe():
    from refine_by_align.pipelines.pipeline import RefineByAlignPipeline

    pipe = RefineByAlignPipeline.from_pretrained("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def simple_inputs():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    mask = np.zeros((96, 128), bool)
    mask[30:50, 40:70] = True
    reference = Image.fromarray(rng.integers(0, 256, (80, 72, 3), dtype=np.uint8))
    return image, mask, reference


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
