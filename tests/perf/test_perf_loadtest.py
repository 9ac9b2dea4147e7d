"""The load test's bookkeeping: how an answer is judged, what the summary counts, what it prints
and when it fails. A small stand-in HTTP server (no model) answers the real requests."""

import io
import json
import threading
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refine_by_align.perf.loadtest import classify, format_summary, passed, plan_requests, run_load_test, summarize

KINDS = ["refine", "align", "large", "bad"]


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, format="PNG")
    return buf.getvalue()


def _result(kind: str, outcome: str, seconds: float, problem: str | None = None) -> dict:
    return {"kind": kind, "status": None, "seconds": seconds, "outcome": outcome, "problem": problem}


# ---------------------------------------------------------------------------------------------------- classify
def test_classify_each_kind_of_answer():
    refine = {"expect": 200, "size": (128, 96)}
    bad = {"expect": 400, "size": None}
    assert classify(refine, 200, _png((128, 96)), "image/png") == ("ok", None)
    outcome, problem = classify(refine, 200, _png((64, 48)), "image/png")
    assert outcome == "error" and problem == "wrong size (64, 48), expected (128, 96)"
    outcome, problem = classify(refine, 200, b"<html>", "text/html")
    assert outcome == "error" and problem.startswith("200 but not a PNG")
    assert classify(bad, 400, b'{"error": "not an image"}', "application/json") == ("rejected_as_expected", None)
    outcome, problem = classify(bad, 400, b"plain text", "text/plain")  # a 4xx must come with a JSON error
    assert outcome == "error" and problem.startswith("HTTP 400")
    outcome, _ = classify(bad, 400, b"{not json", "application/json")
    assert outcome == "error"
    assert classify(refine, 503, b'{"error": "queue full"}', "application/json") == ("busy", None)
    assert classify(bad, 503, b"", "") == ("busy", None)
    outcome, problem = classify(bad, 200, _png((8, 8)), "image/png")  # a bad input that was served
    assert outcome == "error" and problem.startswith("HTTP 200")
    outcome, problem = classify(refine, 500, b"Internal Server Error", "text/plain")
    assert outcome == "error" and "HTTP 500" in problem


def test_plan_is_reproducible_and_follows_the_mix():
    plan = plan_requests(KINDS, 200, (0.6, 0.2, 0.1, 0.1), seed=3)
    assert plan == plan_requests(KINDS, 200, (0.6, 0.2, 0.1, 0.1), seed=3) and len(plan) == 200
    assert set(plan) <= set(KINDS) and plan.count("refine") > plan.count("bad")
    assert set(plan_requests(KINDS, 50, (0, 1, 0, 0))) == {"align"}


# ---------------------------------------------------------------------------------------------------- summarize
def test_summary_counts_latencies_and_failures():
    results = [
        _result("refine", "ok", 1.0), _result("refine", "ok", 3.0), _result("align", "ok", 2.0),
        _result("bad", "rejected_as_expected", 0.1), _result("large", "busy", 0.2),
        _result("refine", "error", 9.0, "HTTP 500: b''"),
    ]
    s = summarize(results, KINDS, wall=2.0, leaked=[], health=200, url="http://x/", concurrency=2, steps=2, temp_dir="/t")
    assert (s["requests"], s["served_ok"], s["rejected_as_expected"], s["busy_503"], s["errors"]) == (6, 3, 1, 1, 1)
    assert s["error_examples"] == ["HTTP 500: b''"]
    assert s["by_kind"] == {"refine": 3, "align": 1, "large": 1, "bad": 1}
    assert s["latency_ok_s"] == {"p50": 2.0, "p90": 2.8, "p99": 2.98, "max": 3.0}  # of the served ones only
    assert s["latency_ok_by_kind_s"]["refine"]["p50"] == 2.0 and s["latency_ok_by_kind_s"]["large"]["p50"] is None
    assert set(s["latency_ok_by_kind_s"]) == {"refine", "align", "large"}
    assert s["latency_all_s"]["max"] == 9.0 and s["throughput_rps"] == 3.0
    assert not passed(s)  # an error
    text = format_summary(s)
    assert text.splitlines()[0] == "6 requests, 2 clients, 2 steps, 2.0 s against http://x/"
    assert "served ok 3, rejected as expected (bad input) 1, busy (503) 1, errors 1" in text
    assert "  error: HTTP 500: b''" in text and "temp files leaked: 0" in text

    clean = summarize(results[:5], KINDS, wall=0.0, leaked=[], health=200)
    assert passed(clean) and clean["throughput_rps"] is None
    assert not passed(summarize(results[:5], KINDS, 1.0, leaked=["tmpabc"], health=200))
    assert not passed(summarize(results[:5], KINDS, 1.0, leaked=[], health="URLError: refused"))
    empty = summarize([], KINDS, 1.0, [], 200)
    assert empty["latency_ok_s"] == {"p50": None, "p90": None, "p99": None, "max": None} and passed(empty)


# ---------------------------------------------------------------------------------------------------- end to end
class _StandIn(BaseHTTPRequestHandler):
    """Answers like the server would, without a model: the image's size back for /api/refine, the
    reference's for /api/align, 400 JSON for an undecodable image; ``leak`` leaves a file behind."""

    temp_dir: Path
    leak = False
    count = 0
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, b'{"status": "ok"}', "application/json")

    def do_POST(self):
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        msg = BytesParser().parsebytes(b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
        files = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True) for part in msg.get_payload()}
        cls = type(self)
        with cls.lock:
            cls.count += 1
            if cls.leak and cls.count == 3:
                (self.temp_dir / "left-behind.tmp").write_bytes(b"x")
        try:
            size = Image.open(io.BytesIO(files["reference" if self.path == "/api/align" else "image"])).size
        except Exception:
            self._send(400, json.dumps({"error": "image: not a readable image"}).encode(), "application/json")
            return
        self._send(200, _png(size), "image/png")


@pytest.fixture
def stand_in(tmp_path):
    handler = type("Handler", (_StandIn,), {"temp_dir": tmp_path, "leak": False, "count": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_run_against_a_stand_in_server(stand_in, tmp_path):
    handler, url = stand_in
    s = run_load_test(url, requests=12, concurrency=3, steps=1, timeout=60, seed=1, temp_dir=tmp_path, exact_temp=True)
    plan = plan_requests(KINDS, 12, (0.6, 0.2, 0.1, 0.1), seed=1)
    assert s["by_kind"] == {k: plan.count(k) for k in KINDS}
    assert s["served_ok"] == 12 - plan.count("bad") and s["rejected_as_expected"] == plan.count("bad")
    assert (s["errors"], s["busy_503"], s["leaked_temp_files"], s["health_after"]) == (0, 0, [], 200)
    assert handler.count == 13  # the 12 and one warm-up
    assert s["temp_check"] == "private TMPDIR of the server" and passed(s)


def test_a_leaked_temporary_file_fails_the_run(stand_in, tmp_path):
    handler, url = stand_in
    handler.leak = True  # the third request (the warm-up is the first) leaves a file in the temp folder
    s = run_load_test(url, requests=4, concurrency=1, steps=1, timeout=60, temp_dir=tmp_path)
    assert s["leaked_temp_files"] == ["left-behind.tmp"] and s["errors"] == 0
    assert not passed(s) and "temp files leaked: 1 (best effort" in format_summary(s)
