"""Issue 16 items 2, 5 and 10 at the HTTP API: the same ranges as the command line and the batch
(seed 0..2^63-1, guidance finite in 0..50) and a transparent reference named as such; 400, JSON."""

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from refine_by_align.server import ServerSettings, create_app


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
        # (the worker frees its place just after the answer is sent: wait for it, a loaded machine may lag)
        assert _wait_until(lambda: c.get("/api/health").json()["queue"]["running"] == 0)


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


# ---------------------------------------------------------------------------------------------------- item 11
def _asgi_post(app, chunks, then: str):
    """POST /api/refine to ``app`` directly (ASGI): the body ``chunks``, then ``then``: 'disconnect'
    (the client goes away) or 'hang' (it sends nothing more). Returns the messages the app sent."""
    import asyncio

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/refine", "raw_path": b"/api/refine", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:7860"), (b"content-type", b"multipart/form-data; boundary=XyZ"),
                    (b"content-length", b"100000")],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 7860),
    }
    pending = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    sent = []

    async def receive():
        if pending:
            return pending.pop(0)
        if then == "disconnect":
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 60))
    return sent


def _first_part(api_inputs) -> bytes:
    data = api_inputs["files"]["image"][1]
    return (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"image.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + data[: len(data) // 2])


def test_client_disconnect_mid_upload_logs_no_traceback(fake_pipe_cls, api_inputs, caplog):
    import logging

    pipe = fake_pipe_cls()
    app = create_app(pipe, ServerSettings())
    try:
        with caplog.at_level(logging.DEBUG):
            _asgi_post(app, [_first_part(api_inputs)], then="disconnect")
        loud = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
        assert not loud, [r.getMessage() for r in loud]
        assert any("disconnected" in r.getMessage() for r in caplog.records)
        assert pipe.calls == 0 and app.state.runner.counts()["waiting"] == 0
    finally:
        app.state.runner.close()


def test_slow_body_is_answered_408(fake_pipe_cls, api_inputs):
    """A client that stops sending its body: 408 once the body time limit is up (no timing asserted:
    the app must answer at all, where it used to wait for ever)."""
    pipe = fake_pipe_cls()
    app = create_app(pipe, ServerSettings(body_timeout_s=0.2))
    try:
        sent = _asgi_post(app, [_first_part(api_inputs)], then="hang")
    finally:
        app.state.runner.close()
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 408 and b"did not arrive within this server's limit of 0.2 s" in body
    assert pipe.calls == 0


def test_slow_request_head_is_closed_by_the_server(fake_pipe_cls):
    """A client that sends part of a request line and headers and then nothing: the server closes
    the connection after the header time limit (uvicorn alone would keep it open for ever)."""
    import socket
    import threading

    from refine_by_align.server.serve import bind_socket, make_server

    settings = ServerSettings(header_timeout_s=0.3)
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(create_app(fake_pipe_cls(), settings), settings, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert _wait_until(lambda: server.started)
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # ... and the blank line never comes
            try:
                data = c.recv(1024)
            except socket.timeout:
                data = None
            assert data == b"", "the server kept a connection with an unfinished request head open"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:  # a complete request is still served
            c.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := c.recv(4096):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_host_header_must_name_this_server(fake_pipe_cls, api_inputs):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends Host:
    evil.example. Only the bound names, localhost and IP addresses are answered, unless allowed."""
    import argparse

    from refine_by_align.server.settings import add_serve_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    settings = settings_from_args(parser.parse_args(["--host", "127.0.0.1"]))
    with TestClient(create_app(fake_pipe_cls(), settings), base_url="http://127.0.0.1:7860") as c:
        assert c.get("/api/health").status_code == 200
        for host in ("localhost:7860", "[::1]:7860", "127.0.0.1"):
            assert c.get("/api/health", headers={"Host": host}).status_code == 200, host
        for method in ("get", "post"):
            r = getattr(c, method)("/api/health" if method == "get" else "/api/refine", headers={"Host": "evil.example:7860"})
            assert r.status_code == 400 and "Host header 'evil.example:7860'" in r.json()["error"], r.text
            assert "--allow-host evil.example" in r.json()["error"]
    settings = settings_from_args(parser.parse_args(["--host", "127.0.0.1", "--allow-host", "evil.example"]))
    with TestClient(create_app(fake_pipe_cls(), settings), base_url="http://127.0.0.1:7860") as c:
        assert c.get("/api/health", headers={"Host": "evil.example:7860"}).status_code == 200
        assert c.get("/api/health", headers={"Host": "other.example"}).status_code == 400
    settings = settings_from_args(parser.parse_args(["--allow-host", "*"]))
    with TestClient(create_app(fake_pipe_cls(), settings)) as c:
        assert c.get("/api/health", headers={"Host": "anything.example"}).status_code == 200


# ---------------------------------------------------------------------------------------------------- cancelling
def test_cancelled_waiting_job_leaves_the_queue_at_once(fake_pipe_cls, api_inputs):
    """DELETE on a waiting job answers it 499 and frees its place in the queue at once (it stayed
    queued, holding its place, until the worker reached it)."""
    import threading

    gate = threading.Event()
    pipe = fake_pipe_cls(gate=gate)
    try:
        with TestClient(create_app(pipe, ServerSettings(max_queue=1, job_timeout_s=60))) as c:
            running = c.post("/api/jobs", files=api_inputs["files"], data={"steps": "1"}).json()["id"]
            assert _wait_until(lambda: c.get("/api/health").json()["queue"]["running"] == 1)
            waiting = c.post("/api/jobs", files=api_inputs["files"], data={"steps": "1"}).json()["id"]
            assert c.post("/api/jobs", files=api_inputs["files"]).status_code == 503  # the queue is full
            r = c.delete(f"/api/jobs/{waiting}")
            assert r.status_code == 200 and r.json()["state"] == "error" and r.json()["status_code"] == 499, r.json()
            assert c.get("/api/health").json()["queue"]["waiting"] == 0
            assert c.post("/api/jobs", files=api_inputs["files"], data={"steps": "1"}).status_code == 202  # its place is free
            assert c.get(f"/api/jobs/{running}").json()["state"] == "running"
    finally:
        gate.set()


def test_cancelled_running_job_stops_at_its_next_stage(fake_pipe_cls, api_inputs):
    """DELETE on a running job answers it 499 at once; its work stops at the pipeline's next stage
    check (stage_callback, routed through the job), not at the end of the work."""
    import threading

    entered, release = threading.Event(), threading.Event()

    class Staged(fake_pipe_cls):
        stage_callback = None
        stages_run = 0

        def __call__(self, *args, **kwargs):
            entered.set()
            for stage in ("align", "warp", "redraw", "paste"):
                release.wait(60)
                self.stage_callback(stage)  # the server's check: raises once the job is cancelled
                self.stages_run += 1
            return super().__call__(*args, **kwargs)

    pipe = Staged()
    try:
        with TestClient(create_app(pipe, ServerSettings(max_queue=0, job_timeout_s=60))) as c:
            job = c.post("/api/jobs", files=api_inputs["files"], data={"steps": "1"}).json()["id"]
            assert entered.wait(60)
            r = c.delete(f"/api/jobs/{job}")
            assert r.json()["state"] == "error" and r.json()["status_code"] == 499 and "cancelled by the user" in r.json()["error"]
            release.set()
            assert _wait_until(lambda: c.get("/api/health").json()["queue"]["running"] == 0)
            assert pipe.stages_run == 0 and pipe.calls == 0  # stopped at the first stage check
            assert c.post("/api/refine", files=api_inputs["files"], data={"steps": "1"}).status_code == 200
    finally:
        release.set()


def test_pipeline_calls_its_stage_callback_before_each_stage(tiny_pipe, api_inputs):
    """The pipeline's stages in order, and an exception from the callback stops the run there."""
    from PIL import Image as _Image

    seen = []
    image, mask, reference = _Image.fromarray(api_inputs["image"]), api_inputs["mask"], _Image.fromarray(api_inputs["reference"])
    tiny_pipe.stage_callback = seen.append
    try:
        tiny_pipe(image, mask, reference, num_inference_steps=1)
        assert seen[0] == "align" and seen[-1] == "paste" and seen.index("warp") < seen.index("redraw") < seen.index("paste"), seen
        seen.clear()
        tiny_pipe.align(image, mask, reference)
        assert seen == ["align"]

        def stop_at_warp(stage):
            if stage == "warp":
                raise KeyboardInterrupt("stop")

        tiny_pipe.stage_callback = stop_at_warp
        with pytest.raises(KeyboardInterrupt):
            tiny_pipe(image, mask, reference, num_inference_steps=1)
    finally:
        tiny_pipe.stage_callback = None


def test_float_picture_out_of_range_is_400(fake_client, api_inputs):
    """A float TIFF beyond 0..65535 is one 400 naming its range (not a white picture, not a 500)."""
    import io as _io

    import numpy as np

    buf = _io.BytesIO()
    Image.fromarray((api_inputs["image"][..., 0].astype(np.float32) * 1000.0), "F").save(buf, format="TIFF")
    r = fake_client.post("/api/refine", files=dict(api_inputs["files"], image=("depth.tif", buf.getvalue(), "image/tiff")))
    assert r.status_code == 400 and "only 0..1, 0..255 or 0..65535" in r.json()["error"], r.text
    assert fake_client.get("/api/health").status_code == 200


def test_form_limits_are_said_in_the_apis_words(fake_client, api_inputs):
    """The multipart parser's limits were answered in Starlette's words ("Part exceeded maximum size
    of 4KB.", "Too many files. Maximum number of files is 13."): now they name the fields."""
    f = api_inputs["files"]
    many = [("image", f["image"]), ("mask", f["mask"])] + [("reference", f["reference"])] * 20
    r = fake_client.post("/api/refine", files=many)
    assert r.status_code == 400 and r.json()["error"].startswith("too many file fields") and "up to 4 'reference'" in r.json()["error"], r.text
    r = fake_client.post("/api/refine", files=f, data={"steps": "1" * 5000})
    assert r.status_code == 400 and "longer than 4096 bytes" in r.json()["error"] and "steps" in r.json()["error"], r.text
    assert "Starlette" not in r.text and "KB." not in r.text
    assert fake_client.get("/api/health").status_code == 200


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_max_upload_must_be_a_positive_number(value):
    """``--max-upload-mb nan`` said "cannot convert float NaN to integer", naming no option."""
    import argparse

    from refine_by_align.io import InputError
    from refine_by_align.server.settings import add_serve_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    with pytest.raises(InputError, match="--max-upload-mb must be a positive number"):
        settings_from_args(parser.parse_args(["--max-upload-mb", value]))


def test_head_requests_on_the_page_and_health(fake_client):
    """Monitors and proxies check a server with HEAD: it was 405 on / and /api/health."""
    for path in ("/", "/api/health"):
        r = fake_client.head(path)
        assert r.status_code == 200 and r.content == b"", (path, r.status_code)
