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
