"""A bounded load test of a refine-by-align server over loopback.

    python -m refine_by_align.perf.loadtest                       # starts its own server (tiny model)
    python -m refine_by_align.perf.loadtest --url http://127.0.0.1:7860/ --requests 100

Sends ``--requests`` requests from ``--concurrency`` client threads: mostly ``/api/refine``, some
``/api/align``, some with a 2-3 MB image (uploads over 1 MB are spooled to temporary files by the
multipart parser), and some deliberately bad ones (a text file as the image) that must be answered
with a 4xx JSON error. Reports requests served, errors, refusals for a full queue (503), latency
p50/p90/p99, and checks that no temporary files were left behind: exactly, with a private TMPDIR,
when it started the server itself; best effort (new files in the system temp folder) otherwise.
One warm-up request (not counted) runs first, so caches created lazily on first use
(``torchinductor_*``) are not mistaken for leaks. Exit code 0 when there were no errors and no
leaked files, 1 otherwise. (``python -m refine_by_align.server.loadtest``, its old place, runs it too.)

The bookkeeping is separate from the HTTP: :func:`classify` judges one answer,
:func:`summarize` counts the outcomes, latencies and leaks, :func:`format_summary` and
:func:`passed` say what the command prints and returns.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["main", "run_load_test", "plan_requests", "classify", "summarize", "format_summary", "passed"]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _payloads(seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    mask = np.zeros((96, 128), np.uint8)
    mask[30:50, 40:70] = 255
    big = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    big_mask = np.zeros((768, 1024), np.uint8)
    big_mask[300:360, 400:480] = 255
    ref = _png(rng.integers(0, 256, (80, 72, 3), dtype=np.uint8))
    return {
        "refine": {"files": {"image": _png(small), "mask": _png(mask), "reference": ref}, "path": "/api/refine", "expect": 200, "size": (128, 96)},
        "align": {"files": {"image": _png(small), "mask": _png(mask), "reference": ref}, "path": "/api/align", "expect": 200, "size": (72, 80)},
        "large": {"files": {"image": _png(big), "mask": _png(big_mask), "reference": ref}, "path": "/api/refine", "expect": 200, "size": (1024, 768)},
        "bad": {"files": {"image": b"this is not an image", "mask": _png(mask), "reference": ref}, "path": "/api/refine", "expect": 400, "size": None},
    }


def _multipart(files: dict[str, bytes], fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = "rba" + secrets.token_hex(12)
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _one(url: str, kind: str, payload: dict, steps: int, timeout: float) -> dict:
    body, ctype = _multipart(payload["files"], {"steps": str(steps), "seed": "0"})
    req = urllib.request.Request(url.rstrip("/") + payload["path"], data=body, method="POST", headers={"Content-Type": ctype})
    t0 = time.perf_counter()
    status, content, ctype_out, problem = None, b"", "", None
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, content, ctype_out = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, content, ctype_out = e.code, e.read(), e.headers.get("Content-Type", "")
    except Exception as e:  # connection refused / reset / timeout
        problem = f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    if problem is None:
        outcome, problem = classify(payload, status, content, ctype_out)
    else:
        outcome = "error"
    return {"kind": kind, "status": status, "seconds": seconds, "outcome": outcome, "problem": problem}


def classify(payload: dict, status: int, content: bytes, content_type: str) -> tuple[str, str | None]:
    """(outcome, problem) of one answer to ``payload`` (its ``expect``-ed status and, for 200, the
    image ``size``): ``ok`` (an image of the right size), ``rejected_as_expected`` (the expected 4xx
    with a JSON ``error``), ``busy`` (503, queue full) or ``error`` with what was wrong."""
    if status == payload["expect"] == 200:
        try:
            img = Image.open(io.BytesIO(content))
            img.load()
        except Exception as e:
            return "error", f"200 but not a PNG: {e}"
        if img.size != payload["size"]:
            return "error", f"wrong size {img.size}, expected {payload['size']}"
        return "ok", None
    if status == payload["expect"] and "json" in content_type:
        try:
            body = json.loads(content or b"{}")
        except ValueError:
            body = {}
        if isinstance(body, dict) and "error" in body:
            return "rejected_as_expected", None
    if status == 503:
        return "busy", None
    return "error", f"HTTP {status}: {content[:200]!r}"


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(a, q)), 3) for q in (50, 90, 99)} | {"max": round(float(a.max()), 3)}


def _temp_entries(folder: Path) -> set[str]:
    try:
        return {p.name for p in folder.iterdir()}
    except OSError:
        return set()


def plan_requests(kinds: list[str], requests: int, mix: tuple[float, ...], seed: int = 0) -> list[str]:
    """The kind of each request, drawn with the weights ``mix`` (one per kind), reproducibly."""
    rng = np.random.default_rng(seed)
    return [kinds[i] for i in rng.choice(len(kinds), size=requests, p=np.asarray(mix) / sum(mix))]


def run_load_test(url: str, requests: int = 40, concurrency: int = 4, steps: int = 2, timeout: float = 300.0,
                  mix: tuple[float, float, float, float] = (0.6, 0.2, 0.1, 0.1), seed: int = 0,
                  temp_dir: Path | None = None, exact_temp: bool = False) -> dict:
    """Send ``requests`` requests (mix of refine / align / large / bad) and summarise."""
    payloads = _payloads(seed)
    kinds = list(payloads)
    plan = plan_requests(kinds, requests, mix, seed)
    temp_dir = Path(temp_dir or tempfile.gettempdir())
    warm = _one(url, "refine", payloads["refine"], steps, timeout)  # first call: lazy caches (torchinductor_*)
    if warm["outcome"] != "ok":
        raise RuntimeError(f"warm-up request failed: {warm['problem'] or warm['status']}")
    time.sleep(0.2)
    before = _temp_entries(temp_dir)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda k: _one(url, k, payloads[k], steps, timeout), plan))
    wall = time.perf_counter() - t0
    time.sleep(0.5)  # let the server finish closing request files
    after = _temp_entries(temp_dir)
    leaked = sorted(after - before)
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/health", timeout=30) as r:
            health = r.status
    except Exception as e:
        health = f"{type(e).__name__}: {e}"
    return summarize(
        results, kinds, wall, leaked, health, url=url, concurrency=concurrency, steps=steps, temp_dir=temp_dir, exact_temp=exact_temp
    )


def summarize(
    results: list[dict], kinds: list[str], wall: float, leaked: list[str], health: int | str, *, url: str = "",
    concurrency: int = 1, steps: int = 0, temp_dir: Path | str = "", exact_temp: bool = False,
) -> dict:
    """The load test's summary of the per-request ``results`` (``kind``, ``seconds``, ``outcome``,
    ``problem``): counts by outcome and kind, latency percentiles of the served requests (by kind
    for the first three kinds: refine, align, large) and of all, throughput, leaked temporary files
    and the health status afterwards."""
    ok = [r for r in results if r["outcome"] == "ok"]
    return {
        "url": url,
        "requests": len(results),
        "concurrency": concurrency,
        "steps": steps,
        "wall_seconds": round(wall, 2),
        "served_ok": len(ok),
        "rejected_as_expected": sum(r["outcome"] == "rejected_as_expected" for r in results),
        "busy_503": sum(r["outcome"] == "busy" for r in results),
        "errors": sum(r["outcome"] == "error" for r in results),
        "error_examples": [r["problem"] for r in results if r["outcome"] == "error"][:5],
        "by_kind": {k: sum(r["kind"] == k for r in results) for k in kinds},
        "latency_ok_s": _percentiles([r["seconds"] for r in ok]),
        "latency_ok_by_kind_s": {k: _percentiles([r["seconds"] for r in ok if r["kind"] == k]) for k in kinds[:3]},
        "latency_all_s": _percentiles([r["seconds"] for r in results]),
        "throughput_rps": round(len(results) / wall, 3) if wall > 0 else None,
        "temp_dir": str(temp_dir),
        "temp_check": "private TMPDIR of the server" if exact_temp else "best effort: new entries in the shared temp folder",
        "leaked_temp_files": leaked,
        "health_after": health,
    }


def format_summary(s: dict) -> str:
    """The lines the command prints for a :func:`summarize` result."""
    lat = s["latency_ok_s"]
    lines = [
        f"{s['requests']} requests, {s['concurrency']} clients, {s['steps']} steps, {s['wall_seconds']} s against {s['url']}",
        f"  served ok {s['served_ok']}, rejected as expected (bad input) {s['rejected_as_expected']}, "
        f"busy (503) {s['busy_503']}, errors {s['errors']}",
        f"  latency of served requests: p50 {lat['p50']} s, p90 {lat['p90']} s, p99 {lat['p99']} s, max {lat['max']} s",
    ]
    for kind, q in s["latency_ok_by_kind_s"].items():
        lines.append(f"    {kind:<7} p50 {q['p50']} s, p90 {q['p90']} s, p99 {q['p99']} s ({s['by_kind'][kind]} sent)")
    lines.append(f"  throughput {s['throughput_rps']} req/s; health afterwards: {s['health_after']}")
    lines.append(f"  temp files leaked: {len(s['leaked_temp_files'])} ({s['temp_check']})")
    lines += [f"  error: {e}" for e in s["error_examples"]]
    return "\n".join(lines)


def passed(s: dict) -> bool:
    """No errors, no leaked temporary files, and the server healthy afterwards."""
    return s["errors"] == 0 and not s["leaked_temp_files"] and s["health_after"] == 200


def _spawn_server(model: str, tmp: Path, queue: int) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, TMPDIR=str(tmp), TEMP=str(tmp), TMP=str(tmp), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "refine_by_align.server", "--model", model, "--port", "0", "--log-level", "warning",
           "--queue", str(queue)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    url: list[str] = []
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if "serving model" in line and not url:
                url.append(line.split(" on ", 1)[1].split()[0])
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(180) or not url:
        proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(lines[-20:]))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url[0] + "api/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url[0]
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server never became healthy:\n" + "".join(lines[-20:]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refine_by_align.perf.loadtest", description=__doc__.split("\n")[0])
    p.add_argument("--url", help="a running server (default: start one with --model on a free loopback port)")
    p.add_argument("--model", default="tiny", help="model for the server this starts (default: %(default)s)")
    p.add_argument("--requests", type=int, default=40, help="number of requests (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=4, help="client threads (default: %(default)s)")
    p.add_argument("--queue", type=int, default=4, help="queue length of the server this starts (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2, help="sampling steps per refine (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        p.error("--requests must be in 1..100000 and --concurrency in 1..256")

    proc = None
    tmp_ctx = tempfile.TemporaryDirectory(prefix="rba-loadtest-")
    try:
        if args.url:
            url, temp_dir, exact = args.url, None, False
        else:
            temp_dir = Path(tmp_ctx.name)
            proc, url = _spawn_server(args.model, temp_dir, args.queue)
            exact = True
        s = run_load_test(url, args.requests, args.concurrency, args.steps, args.timeout, temp_dir=temp_dir, exact_temp=exact)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        tmp_ctx.cleanup()
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    return 0 if passed(s) else 1


if __name__ == "__main__":
    sys.exit(main())
