"""Several references at /api/refine and /api/jobs (issue 15 part 1): the ``reference`` field
repeated (at most 4), the k-th reference's mask in ``reference_mask_k``; one reference stays the
request it always was; every bad input is one 400 naming the reference."""

import base64
import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from refine_by_align.server import ServerSettings, create_app
from refine_by_align.server.app import MAX_REFERENCES


def _files(api_inputs, png, count=2, masks=None):
    """A multipart list: image, mask and ``count`` references (the k-th a shifted copy of the first);
    ``masks``: {k: PNG bytes} for reference_mask (k = 1) or reference_mask_k."""
    f = api_inputs["files"]
    items = [("image", f["image"]), ("mask", f["mask"])]
    for k in range(1, count + 1):
        ref = np.roll(api_inputs["reference"], 3 * (k - 1), axis=1)
        items.append(("reference", (f"ref{k}.png", png(ref), "image/png")))
    for k, data in (masks or {}).items():
        items.append(("reference_mask" if k == 1 else f"reference_mask_{k}", (f"rm{k}.png", data, "image/png")))
    return items


def _decode(b64):
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture(scope="module")
def tiny_client(request):
    app = create_app(request.getfixturevalue("tiny_pipe"), ServerSettings(model_name="tiny", max_image_side=512))
    with TestClient(app) as c:
        yield c


def test_two_references_with_the_tiny_model(tiny_client, api_inputs, png, wait_for_job):
    """The real pipeline: the PNG answer with X-Guide / X-References, the JSON answer, and a queued
    job with its source and compare pictures."""
    c = tiny_client
    files = _files(api_inputs, png, 2, {2: api_inputs["ref_mask_png"]})
    r = c.post("/api/refine", files=files, data={"steps": "2"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (128, 96)
    per = json.loads(r.headers["x-references"])
    assert len(per) == 2 and all(set(p) == {"warp_fraction", "ring_ncc"} for p in per)
    assert r.headers["x-guide"] in ("0", "1")

    r = c.post("/api/refine?output=json", files=files, data={"steps": "2"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    d = r.json()
    assert _decode(d["image"]).size == (128, 96) and _decode(d["source"]).size == (128, 96)
    assert [p["name"] for p in d["references"]] == ["ref1.png", "ref2.png"]
    assert [p["number"] for p in d["references"]] == [1, 2]
    assert sum(p["guided"] for p in d["references"]) == 1 and d["references"][d["guide"]]["guided"]
    assert all(0.0 <= p["warp_fraction"] <= 1.0 for p in d["references"])
    assert d["references"][0]["colour"] != d["references"][1]["colour"]

    r = c.post("/api/jobs", files=files, data={"mode": "refine", "steps": "2"})
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    s = wait_for_job(c, job, 180)
    assert s["state"] == "done", s
    assert {"result.png", "source.png", "compare.png", "heatmap.png"} <= set(s["outputs"])
    assert len(s["info"]["references"]) == 2 and s["info"]["guide"] in (0, 1)
    assert Image.open(io.BytesIO(c.get(f"/api/jobs/{job}/source.png").content)).size == (128, 96)
    compare = Image.open(io.BytesIO(c.get(f"/api/jobs/{job}/compare.png").content))
    assert compare.width > 4 * compare.height  # input, two references, result, source


def test_one_reference_is_answered_as_before(fake_client, api_inputs, wait_for_job):
    r = fake_client.post("/api/refine", files=api_inputs["files"], data={"steps": "1"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "x-guide" not in r.headers and "x-references" not in r.headers
    r = fake_client.post("/api/jobs", files=api_inputs["files"], data={"steps": "1"})
    s = wait_for_job(fake_client, r.json()["id"], 20, poll_s=0.01)
    assert s["state"] == "done" and "references" not in s["info"] and "source.png" not in s["outputs"]
    # a one-reference job still says how it aligned and what the warp gave, as the command line does
    assert {"alignment", "warp_fraction", "notes"} <= set(s["info"]) and isinstance(s["info"]["notes"], list)
    assert s["info"]["settings"] == {"seed": 0, "steps": 1, "guidance": None}  # (what the result was made with)
    # the JSON answer gives one reference's figures
    r = fake_client.post("/api/refine?output=json", files=api_inputs["files"], data={"steps": "1"})
    assert r.status_code == 200 and len(r.json()["references"]) == 1 and r.json()["guide"] == 0
    health = fake_client.get("/api/health").json()
    assert health["limits"]["max_references"] == MAX_REFERENCES and "torch" in health["environment"]["versions"]


def test_fake_pipe_gets_lists_and_the_figures_come_back(fake_client, api_inputs, png):
    files = _files(api_inputs, png, 3, {1: api_inputs["ref_mask_png"], 3: api_inputs["ref_mask_png"]})
    r = fake_client.post("/api/refine?output=json", files=files, data={"steps": "1"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert fake_client.pipe.references == 3 and d["guide"] == 2
    assert [p["guided"] for p in d["references"]] == [False, False, True]
    assert [p["warp_fraction"] for p in d["references"]] == [0.5, 0.0, 0.0]
    assert [p["ring_ncc"] for p in d["references"]] == [0.5, 0.4, 0.3]
    src = np.asarray(_decode(d["source"]).convert("RGB"))
    out = np.asarray(_decode(d["image"]).convert("RGB"))
    m = api_inputs["mask"]
    assert (src[~m] == out[~m]).all() and (src[m] != out[m]).any()  # only the mask is tinted


def _bad_cases(api_inputs, png):
    good = _files(api_inputs, png, 2)
    small = png(np.zeros((10, 10), np.uint8))
    return {
        "unreadable_second": (good[:3] + [("reference", ("broken.png", b"not an image", "image/png"))],
                              "reference #2 'broken.png': not a readable image"),
        "empty_third": (good + [("reference", ("empty.png", b"", "image/png"))], "reference #3 'empty.png': empty file"),
        "too_many": (_files(api_inputs, png, MAX_REFERENCES + 1), f"at most {MAX_REFERENCES} references per request, got 5"),
        "mask_without_its_reference": (good + [("reference_mask_3", ("rm3.png", api_inputs["ref_mask_png"], "image/png"))],
                                       "'reference_mask_3' is the mask of reference #3 but 2 references were sent"),
        "mask_2_for_one_reference": (good[:3] + [("reference_mask_2", ("rm2.png", api_inputs["ref_mask_png"], "image/png"))],
                                     "is the mask of reference #2 but 1 reference was sent"),
        "repeated_mask": (good + [("reference_mask", ("a.png", api_inputs["ref_mask_png"], "image/png"))] * 2,
                          "field 'reference_mask' was sent more than once (the k-th reference's mask is reference_mask_k"),
        "second_mask_wrong_size": (good + [("reference_mask_2", ("small.png", small, "image/png"))],
                                   "'small.png': size 10x10 does not match the reference 72x80"),
        "second_reference_tiny": (good[:3] + [("reference", ("dot.png", png(np.zeros((4, 4, 3), np.uint8)), "image/png"))],
                                  "'dot.png': 4x4 is too small"),  # (io.check_input_sizes leaves out the number)
        "text_reference": (good, "must be a file upload"),
    }


@pytest.mark.parametrize("endpoint", ["/api/refine", "/api/refine?output=json", "/api/jobs"])
def test_bad_reference_lists_are_one_400_naming_the_reference(fake_client, api_inputs, png, endpoint):
    for name, (files, message) in _bad_cases(api_inputs, png).items():
        data = {"reference": "x"} if name == "text_reference" else None
        r = fake_client.post(endpoint, files=files, data=data)
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json", name
        assert message in r.json()["error"], (name, r.json())
        assert "\n" not in r.json()["error"], name
    assert fake_client.pipe.calls == 0
    r = fake_client.post(endpoint, files=_files(api_inputs, png, 2), data={"steps": "1"})
    assert r.status_code in (200, 202), r.text


def test_align_takes_one_reference_and_output_is_checked(fake_client, api_inputs, png):
    r = fake_client.post("/api/align", files=_files(api_inputs, png, 2))
    assert r.status_code == 400 and "align takes one reference, got 2" in r.json()["error"], r.text
    r = fake_client.post("/api/jobs", files=_files(api_inputs, png, 2), data={"mode": "align"})
    assert r.status_code == 400 and "align takes one reference" in r.json()["error"], r.text
    r = fake_client.post("/api/refine?output=gif", files=_files(api_inputs, png, 2))
    assert r.status_code == 400 and "output must be 'png' or 'json'" in r.json()["error"], r.text
    # detection compares with one reference too
    f = api_inputs["files"]
    r = fake_client.post("/api/detect", files=[("image", f["image"]), ("reference", f["reference"]), ("reference", f["reference"])])
    assert r.status_code == 400 and "'reference' was sent more than once" in r.json()["error"], r.text


def test_a_full_server_refuses_several_references_before_decoding(fake_pipe_cls, api_inputs, png):
    """The same capacity rule as one reference: a busy server with no queue answers 503 before the
    pixels are decoded (a reference whose pixels are cut short gets the 503), and a refused upload
    gives its place back."""
    import threading

    gate = threading.Event()
    pipe = fake_pipe_cls(gate=gate)
    buf = io.BytesIO()
    Image.fromarray(api_inputs["reference"]).save(buf, format="PNG", compress_level=0)
    cut = buf.getvalue()[: len(buf.getvalue()) // 2]
    files = _files(api_inputs, png, 1) + [("reference", ("cut.png", cut, "image/png"))]
    try:
        with TestClient(create_app(pipe, ServerSettings(max_queue=0, job_timeout_s=60))) as c:
            r = c.post("/api/jobs", files=api_inputs["files"], data={"steps": "1"})
            assert r.status_code == 202, r.text
            for _ in range(2000):
                if c.get("/api/health").json()["queue"]["running"] == 1:
                    break
                time.sleep(0.01)
            r = c.post("/api/refine", files=files)
            assert r.status_code == 503 and "server busy" in r.json()["error"], r.text
            gate.set()
            for _ in range(2000):
                if c.get("/api/health").json()["queue"]["running"] == 0:
                    break
                time.sleep(0.01)
            for _ in range(2):  # decoded now: the cut reference is named, and its place is given back
                r = c.post("/api/refine", files=files)
                assert r.status_code == 400 and "reference #2 'cut.png': cannot be decoded" in r.json()["error"], r.text
            r = c.post("/api/refine", files=_files(api_inputs, png, 2), data={"steps": "1"})
            assert r.status_code == 200, r.text
    finally:
        gate.set()


def test_the_body_limit_counts_every_reference(fake_pipe_cls, api_inputs, png):
    pipe = fake_pipe_cls()
    one = sum(len(v[1]) for v in api_inputs["files"].values())
    with TestClient(create_app(pipe, ServerSettings(max_upload_bytes=one + 4096))) as c:
        assert c.post("/api/refine", files=api_inputs["files"], data={"steps": "1"}).status_code == 200
        r = c.post("/api/refine", files=_files(api_inputs, png, 3))
        assert r.status_code == 413 and "over this server's limit" in r.json()["error"], r.text
    assert pipe.calls == 1
