import os

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(min(2, os.cpu_count() or 1))

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
