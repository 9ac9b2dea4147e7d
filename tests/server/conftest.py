"""Shared fixtures for the web app / HTTP API tests (tiny model: seconds on CPU)."""

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image


def png_bytes(array_or_image, mode=None) -> bytes:
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image, mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def api_inputs():
    """A 128x96 image with a 30x20 artifact box, a 72x80 reference; arrays and PNG bytes."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    mask = np.zeros((96, 128), np.uint8)
    mask[30:50, 40:70] = 255
    reference = rng.integers(0, 256, (80, 72, 3), dtype=np.uint8)
    ref_mask = np.zeros((80, 72), np.uint8)
    ref_mask[10:70, 8:60] = 255
    files = {
        "image": ("image.png", png_bytes(image), "image/png"),
        "mask": ("mask.png", png_bytes(mask), "image/png"),
        "reference": ("reference.png", png_bytes(reference), "image/png"),
    }
    return {"image": image, "mask": mask > 0, "reference": reference, "ref_mask": ref_mask > 0,
            "ref_mask_png": png_bytes(ref_mask), "files": files}


class FakePipe:
    """Stands in for the pipeline where timing must be controlled: ``steps`` denoising steps of
    ``step_s`` seconds each, optionally held until ``gate`` is set. Marks the masked pixels black."""

    random_weights = False

    def __init__(self, step_s: float = 0.0, gate: threading.Event | None = None):
        self.step_s = step_s
        self.gate = gate
        self.calls = 0
        self.steps_done = 0  # denoising steps finished, over all calls

    def progress_bar(self, iterable=None, total=None):  # replaced by the server's job bar
        class _Bar:
            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

            def update(self, n=1):
                pass

        return _Bar()

    def __call__(self, image, mask, reference, reference_mask=None, num_inference_steps=None, guidance_scale=None,
                 seed=0, names=None, **kw):
        from refine_by_align.io import to_rgb
        from refine_by_align.pipelines.pipeline import RefineOutput
        from refine_by_align.zoom import Box

        self.calls += 1
        steps = num_inference_steps or 5
        with self.progress_bar(total=steps) as bar:
            for _ in range(steps):
                if self.gate is not None:
                    while not self.gate.wait(0.01):
                        bar.update(0)  # lets the server's time limit / cancel fire while held
                time.sleep(self.step_s)
                self.steps_done += 1
                bar.update()
        arr = np.asarray(to_rgb(image)).copy()
        m = np.asarray(mask, bool)
        arr[m] = 0
        h, w = arr.shape[:2]
        out = RefineOutput(Image.fromarray(arr), None, None, Box(0, 0, w, h), Box(0, 0, 1, 1), {"total": 0.0})
        if isinstance(reference, list):  # several: the last one guides, the left half of the mask is #1's warp
            from refine_by_align.pipelines.references import ReferenceResult

            self.references = len(reference)
            out.references = [ReferenceResult(None, None, None, 0.5 - 0.1 * i, 0.5 if i == 0 else 0.0) for i in range(len(reference))]
            out.guide = len(reference) - 1
            out.source = np.full((h, w), -1, np.int16)
            out.source[m] = 0
            left = m & (np.arange(w)[None, :] < w // 2)
            out.source[left] = 1
        return out


@pytest.fixture
def wait_for_job():
    """``wait(client, job_id, timeout_s, poll_s=0.05)``: poll ``/api/jobs/<id>`` until the job is
    neither queued nor running (failing the test after ``timeout_s``); returns its last status."""

    def wait(client, job_id, timeout_s, poll_s=0.05):
        deadline = time.monotonic() + timeout_s
        while (s := client.get(f"/api/jobs/{job_id}").json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"job {job_id} still {s['state']} after {timeout_s} s"
            time.sleep(poll_s)
        return s

    return wait


@pytest.fixture
def fake_pipe_cls():
    return FakePipe


@pytest.fixture
def fake_client(fake_pipe_cls):
    """A test client of the app on a :class:`FakePipe` (default settings); ``client.pipe`` is the pipe."""
    from fastapi.testclient import TestClient

    from refine_by_align.server import ServerSettings, create_app

    pipe = fake_pipe_cls()
    with TestClient(create_app(pipe, ServerSettings())) as c:
        c.pipe = pipe
        yield c


@pytest.fixture
def png():
    return png_bytes
