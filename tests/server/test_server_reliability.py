"""Issue 16 items 2, 5 and 10 at the HTTP API: the same ranges as the command line and the batch
(seed 0..2^63-1, guidance finite in 0..50) and a transparent reference named as such; 400, JSON."""

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from refine_by_align.server import ServerSettings, create_app


@pytest.fixture
def fake_client(fake_pipe_cls):
    pipe = fake_pipe_cls()
    with TestClient(create_app(pipe, ServerSettings())) as c:
        c.pipe = pipe
        yield c


@pytest.mark.parametrize("seed", ["18446744073709551616", "-9223372036854775809", "-1", "9223372036854775808"])
def test_seed_out_of_range_is_400(fake_client, api_inputs, seed):
    r = fake_client.post("/api/refine", files=api_inputs["files"], data={"seed": seed})
    assert r.status_code == 400 and "seed must be an integer in 0..9223372036854775807" in r.json()["error"], r.text
    assert fake_client.pipe.calls == 0


def test_largest_seed_is_accepted(fake_client, api_inputs):
    r = fake_client.post("/api/refine", files=api_inputs["files"], data={"seed": str(2**63 - 1), "steps": "1"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("endpoint", ["/api/refine", "/api/jobs"])
@pytest.mark.parametrize("guidance", ["1e39", "1e308", "50.01", "1e400"])
def test_huge_guidance_is_400(fake_client, api_inputs, endpoint, guidance):
    r = fake_client.post(endpoint, files=api_inputs["files"], data={"guidance": guidance})
    assert r.status_code == 400, r.text
    assert "guidance must be a finite number in 0..50" in r.json()["error"]
    assert fake_client.pipe.calls == 0


def test_guidance_at_the_bound_is_accepted(fake_client, api_inputs):
    r = fake_client.post("/api/refine", files=api_inputs["files"], data={"guidance": "50", "steps": "1"})
    assert r.status_code == 200, r.text


def test_transparent_reference_without_mask_names_its_alpha(fake_client, api_inputs, png):
    files = dict(api_inputs["files"])
    files["reference"] = ("clear.png", png(Image.new("RGBA", (72, 80), (1, 2, 3, 0))), "image/png")
    r = fake_client.post("/api/refine", files=files)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "reference 'clear.png'" in error and "alpha channel is empty" in error and "reference_mask" not in error


# ---------------------------------------------------------------------------------------------------- item 1
def _wait_until(predicate, tries: int = 2000) -> bool:
    """Poll ``predicate`` (no time is measured: a bounded number of short sleeps)."""
    import time

    for _ in range(tries):
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("endpoint", ["/api/refine", "/api/jobs"])
def test_timeout_covers_preprocessing(fake_pipe_cls, api_inputs, endpoint):
    """A job held before its first denoising step (the pipeline's preprocessing) is answered 504 at
    its limit while the worker is still held, not when the preprocessing ends; the work then stops
    at its next check without running a step, and the worker serves the next job."""
    import threading

    gate = threading.Event()

    class SlowPreprocessing(fake_pipe_cls):
        def __call__(self, *args, **kwargs):
            gate.wait(60)  # stands in for a long alignment / reference encoding: no progress bar yet
            return super().__call__(*args, **kwargs)

    pipe = SlowPreprocessing()
    safety = threading.Timer(60, gate.set)  # the old server answered only once this released the job
    safety.start()
    try:
        with TestClient(create_app(pipe, ServerSettings(job_timeout_s=0.3, max_queue=0))) as c:
            r = c.post(endpoint, files=api_inputs["files"], data={"steps": "2"})
            if endpoint == "/api/jobs":
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
                assert _wait_until(lambda: c.get(f"/api/jobs/{job_id}").json()["state"] == "error" or gate.is_set())
                r = c.get(f"/api/jobs/{job_id}")
                status, error = r.json()["status_code"], r.json()["error"]
            else:
                status, error = r.status_code, r.json()["error"]
            answered_while_held = not gate.is_set()
            assert status == 504 and "longer than the limit of 0.3 s" in error, (status, error)
            assert answered_while_held, "the 504 came only after the preprocessing had finished"
            gate.set()
            assert _wait_until(lambda: c.get("/api/health").json()["queue"]["running"] == 0)
            assert pipe.steps_done == 0  # stopped at its first check, no denoising step ran
            r = c.post("/api/refine", files=api_inputs["files"], data={"steps": "1"})
            assert r.status_code in (200, 504), r.text  # the worker took it (not 503: it is free again)
            assert pipe.calls == 2
    finally:
        safety.cancel()
        gate.set()


# ---------------------------------------------------------------------------------------------------- items 4, 14
def _truncated_png(array) -> bytes:
    """A PNG whose header is intact (its size can be read) but whose pixel data is cut short."""
    import io as _io

    import numpy as np
    from PIL import Image as _Image

    buf = _io.BytesIO()
    _Image.fromarray(np.asarray(array)).save(buf, format="PNG", compress_level=0)
    data = buf.getvalue()
    return data[: len(data) // 2]


def test_full_server_refuses_before_decoding(fake_pipe_cls, api_inputs):
    """Item 4: with the worker busy and no room in the queue, an upload is refused 503 before its
    pixels are decoded (an image whose pixels are broken gets the 503, not the decoding error)."""
    import threading

    gate = threading.Event()
    pipe = fake_pipe_cls(gate=gate)
    try:
        with TestClient(create_app(pipe, ServerSettings(max_queue=0, job_timeout_s=60))) as c:
            r = c.post("/api/jobs", files=api_inputs["files"], data={"steps": "1"})
            assert r.status_code == 202, r.text
            assert _wait_until(lambda: c.get("/api/health").json()["queue"]["running"] == 1)
            files = dict(api_inputs["files"], image=("cut.png", _truncated_png(api_inputs["image"]), "image/png"))
            r = c.post("/api/refine", files=files)
            assert r.status_code == 503 and "server busy" in r.json()["error"], r.text
            assert "Retry-After" in r.headers
    finally:
        gate.set()


def test_refused_upload_gives_its_place_back(fake_pipe_cls, api_inputs):
    """The place held while decoding is released when the upload is refused: with no queue at all,
    a broken upload (400) and then a good one (200) in turn."""
    pipe = fake_pipe_cls()
    with TestClient(create_app(pipe, ServerSettings(max_queue=0))) as c:
        files = dict(api_inputs["files"], image=("cut.png", _truncated_png(api_inputs["image"]), "image/png"))
        for _ in range(3):
            r = c.post("/api/refine", files=files)
            assert r.status_code == 400 and "image 'cut.png': cannot be decoded" in r.json()["error"], r.text
        r = c.post("/api/refine", files=api_inputs["files"], data={"steps": "1"})
        assert r.status_code == 200, r.text
        assert c.get("/api/health").json()["queue"]["running"] == 0


def test_mask_size_checked_from_headers_before_decoding(fake_client, api_inputs, png):
    """Item 14 at the API: a mask of the wrong size is named as such even when the image's pixels
    could not be decoded at all: the sizes are compared from the headers first."""
    import numpy as np

    files = dict(
        api_inputs["files"],
        image=("cut.png", _truncated_png(api_inputs["image"]), "image/png"),
        mask=("small.png", png(np.zeros((40, 50), np.uint8)), "image/png"),
    )
    r = fake_client.post("/api/refine", files=files)
    assert r.status_code == 400, r.text
    assert "mask 'small.png': size 50x40 does not match the image 128x96" in r.json()["error"]
    assert fake_client.pipe.calls == 0
