"""The HTTP API and the single-page web app (FastAPI).

Endpoints (all errors are JSON ``{"error": "..."}`` with a 4xx/5xx status; nothing returns a dead page):

``GET  /``                      the web app (one self-contained HTML page, see ``page.py``)
``GET  /api/health``            200 ``{"status": "ok", ...}`` once the model is loaded, else 503
``POST /api/refine``            multipart ``image``, ``mask``, ``reference`` [, ``reference_mask``, ``steps``,
                                ``guidance``, ``seed``] -> ``image/png``: the refined image (input size);
                                ``?output=json`` gives JSON instead: the image and the source picture as
                                base64 PNGs, with the per-reference figures (see below)
``POST /api/align``             same fields -> ``image/png``: the aligned region M* (reference size);
                                ``?output=heatmap`` gives the heat map over the reference instead
``POST /api/detect``            multipart ``image``, ``reference`` [, ``reference_mask``, ``method``, ``threshold``]
                                -> JSON: the proposed artifact mask (image size) and its heat map as
                                base64 PNGs, with the fit's figures and notes (pipelines/detect.py)
``POST /api/jobs``              same fields + ``mode`` (refine | align) -> 202 ``{"id": ...}``: queued job
``GET  /api/jobs/{id}``         job status: state, step/total, elapsed, queue position, error
``GET  /api/jobs/{id}/{name}``  a finished job's ``result.png``, ``heatmap.png``, ``correspondence.png``
                                (several references: ``source.png``, ``compare.png`` too)
``DELETE /api/jobs/{id}``       cancel a queued or running job
``POST /api/preview``           multipart ``file`` [+ ``role`` = image | mask] -> the PNG the model will see
                                (decoded, EXIF-rotated, 8-bit RGB; a mask as black/white), so the page can
                                show any format the server reads (16-bit PNG, CMYK JPEG, TIFF ...)

Several references (refine, and ``/api/jobs`` in refine mode): the ``reference`` field repeated, at
most :data:`MAX_REFERENCES`, in order; the mask of the first is ``reference_mask``, of the k-th
``reference_mask_k`` (``reference_mask_2`` ...), each optional. One ``reference`` is exactly the
request it always was. With several, the PNG answer carries ``X-Guide`` (index of the reference
that guided the model, from 0) and ``X-References`` (JSON: per reference its ``warp_fraction`` and
``ring_ncc``); the JSON answer and a job's ``info`` carry ``guide`` and ``references`` (per reference:
its number, file name, colour in the source picture, whether it guided, the fraction of the mask
taken from its warp, its ring correlation, its alignment method and notes), and the job gets
``source.png`` (the refined image, each mask pixel tinted by the reference it came from, grey: the
model) and ``compare.png`` (input | a tile per reference | result | source). Align works with one
reference.

Limits (:class:`ServerSettings`): request body bytes (413), image side (413), one job at a time with
``max_queue`` waiting (503 + Retry-After when full), a time limit per job (504). Cross-origin POSTs
(a web page elsewhere posting to this local server) are refused with 403.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..io import MAX_SEED, InputError, alpha_mask, check_detect_settings, check_input_sizes, decode_image, load_inputs, open_image, to_mask, to_rgb
from ..provenance import environment
from .jobs import Job, JobRunner, QueueFull, Slot
from .page import INDEX_HTML
from .settings import ServerSettings, host_allowed

__all__ = ["ServerSettings", "UploadTooLarge", "create_app", "decode_upload"]

logger = logging.getLogger(__name__)

MAX_REFERENCES = 4  # references in one refine request
REFERENCE_MASK_FIELDS = ("reference_mask",) + tuple(f"reference_mask_{k}" for k in range(2, MAX_REFERENCES + 1))
FILE_FIELDS = ("image", "mask", "reference") + REFERENCE_MASK_FIELDS
REQUIRED_FILES = ("image", "mask", "reference")
REPEATABLE = {"reference": MAX_REFERENCES}  # fields that may be sent several times, at most so many
VALUE_FIELDS = ("steps", "guidance", "seed")
DETECT_FILE_FIELDS = ("image", "reference", "reference_mask")
DETECT_REQUIRED = ("image", "reference")
DETECT_VALUE_FIELDS = ("method", "threshold")
DETECT_MIN_SIDE = 16  # pipelines/detect.py refuses smaller images


class UploadTooLarge(InputError):
    """An upload over a configured limit (HTTP 413)."""


class _BodyTooLarge(Exception):
    pass


class _BodyTimeout(Exception):
    pass


# ---------------------------------------------------------------------------------------------------- decoding
def decode_upload(data: bytes, what: str, filename: str | None = None, max_side: int = 4096) -> Image.Image:
    """Decode uploaded bytes as :func:`refine_by_align.io.decode_image` decodes a file's (the same
    function): any mode, EXIF rotation applied, the side limit checked from the header before any
    pixel is decoded (413); every problem is one :class:`InputError` naming the upload."""
    return decode_image(data, what, filename, max_side=max_side, too_large=UploadTooLarge)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _mask_png(mask: np.ndarray) -> bytes:
    return _png(Image.fromarray(mask.astype(np.uint8) * 255))


def _heat_png(reference: Image.Image, heat: np.ndarray | None, region: np.ndarray | None) -> bytes | None:
    import cv2

    from ..visualize import render_heatmap_overlay

    if heat is not None:
        over = render_heatmap_overlay(reference, heat, alpha=0.6)
    elif region is not None:
        over = render_heatmap_overlay(reference, region, alpha=0.45, color=(255, 0, 255))
    else:
        return None
    if region is not None and region.any():
        arr = np.array(over)
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(arr, contours, -1, (255, 255, 255), max(1, round(max(arr.shape[:2]) / 256)))
        over = Image.fromarray(arr)
    return _png(over)


# ---------------------------------------------------------------------------------------------------- requests
@dataclass
class _Inputs:
    image: Image.Image
    mask: np.ndarray
    reference: Image.Image | list[Image.Image]  # a list when several were sent
    reference_mask: np.ndarray | None | list[np.ndarray | None]
    names: dict[str, Any]
    steps: int | None
    guidance: float | None
    seed: int


def _number_value(values: dict[str, str], name: str, kind: type = int) -> int | float | None:
    """A form field as ``kind`` (int or float); None when absent or blank; InputError otherwise."""
    text = values.get(name, "").strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise InputError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def _int_value(values: dict[str, str], name: str) -> int | None:
    return _number_value(values, name, int)


def _float_value(values: dict[str, str], name: str) -> float | None:
    return _number_value(values, name, float)


def _form_limit_message(detail: str, file_fields, value_fields, repeatable: dict) -> str:
    """The multipart parser's refusal (Starlette's wording) as this API says it."""
    once = ", ".join(f for f in file_fields if f not in repeatable)
    if detail.startswith("Too many files"):
        more = "".join(f", up to {n} '{k}'" for k, n in repeatable.items())
        return f"too many file fields: {once} once each{more}"
    if detail.startswith("Too many fields"):
        return f"too many value fields (expected at most: {', '.join(value_fields) or 'none'})"
    if "maximum size" in detail:
        return f"a value field is longer than 4096 bytes (the values {', '.join(value_fields)} are short numbers or names)"
    return f"malformed multipart form ({detail})"


async def _read_form(request, settings: ServerSettings, file_fields, required, value_fields, repeatable=None):
    """Multipart form -> ({field: (bytes, filename)}, {field: text}); InputError on any problem.
    ``repeatable``: fields that may come several times (field -> most times); those map to a list of
    (bytes, filename) in the order sent, even when sent once."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise _HTTPError(415, f"send the inputs as multipart/form-data (curl -F image=@image.png ...), got '{ctype or 'no content type'}'")
    repeatable = repeatable or {}
    files: dict[str, Any] = {key: [] for key in repeatable}
    values: dict[str, str] = {}
    # room for a few more repeats than allowed, so that too many is answered by the count below
    max_files = len(file_fields) + 2 * sum(n - 1 for n in repeatable.values())
    try:
        form = await request.form(max_files=max_files, max_fields=len(value_fields), max_part_size=4096)
    except StarletteHTTPException as e:  # the multipart parser's limits, in Starlette's words: said in ours
        raise InputError(_form_limit_message(str(e.detail), file_fields, value_fields, repeatable)) from None
    try:
        for key, item in form.multi_items():
            if key not in repeatable and (key in files or key in values):
                hint = " (the k-th reference's mask is reference_mask_k: reference_mask_2 ...)" if key == "reference_mask" and repeatable else ""
                raise InputError(f"field '{key}' was sent more than once{hint}")
            if key in file_fields:
                if isinstance(item, str):
                    raise InputError(f"field '{key}' must be a file upload (curl -F {key}=@FILE), not text")
                upload = (await item.read(), item.filename or key)
                if key in repeatable:
                    files[key].append(upload)
                else:
                    files[key] = upload
            elif key in value_fields:
                if not isinstance(item, str):
                    raise InputError(f"field '{key}' must be a plain value, not a file")
                values[key] = item
            else:
                expected = ", ".join(list(file_fields) + list(value_fields))
                raise InputError(f"unknown field '{key}' (expected: {expected})")
    finally:
        await form.close()  # (its uploads' spooled files)
    for key, most in repeatable.items():
        if len(files[key]) > most:
            raise InputError(f"at most {most} {key}s per request, got {len(files[key])} '{key}' fields")
        if not files[key]:
            del files[key]
    missing = [k for k in required if k not in files]
    if missing:
        raise InputError(f"missing file field(s): {', '.join(missing)} (required: {', '.join(required)})")
    return files, values


def _reference_files(files: dict[str, Any]) -> dict[str, Any]:
    """The form's files as :func:`io.load_inputs` takes them: one reference as it always was (a
    (bytes, name) pair, its mask under ``reference_mask``); several as lists, the k-th reference's
    mask from ``reference_mask_k`` (None where it has none)."""
    files = dict(files)
    refs = files.pop("reference")
    masks = [files.pop(key, None) for key in REFERENCE_MASK_FIELDS]
    for k, m in enumerate(masks[len(refs):], start=len(refs) + 1):
        if m is not None:
            sent = "1 reference was" if len(refs) == 1 else f"{len(refs)} references were"
            raise InputError(f"field '{REFERENCE_MASK_FIELDS[k - 1]}' is the mask of reference #{k} but {sent} sent")
    if len(refs) == 1:
        files["reference"] = refs[0]
        if masks[0] is not None:
            files["reference_mask"] = masks[0]
    else:
        files["reference"] = refs
        files["reference_mask"] = masks[: len(refs)]
    return files


def _prepare(files: dict[str, tuple[bytes, str]], values: dict[str, str], settings: ServerSettings, reserve) -> tuple[_Inputs, Slot]:
    """Check the values and the images' headers (sizes), hold a place in the queue (``reserve()``,
    QueueFull when there is none), then decode and check the pixels (runs in a worker thread).
    Returns the inputs and the held place (the caller submits the job in it or releases it)."""
    from ..io import check_settings

    steps = _int_value(values, "steps")
    guidance = _float_value(values, "guidance")
    seed = _int_value(values, "seed")
    check_settings(steps, guidance)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be an integer in 0..{MAX_SEED}, got {seed}")
    slot: Slot | None = None

    def hold_place() -> None:
        nonlocal slot
        slot = reserve()

    try:
        image, mask, reference, ref_mask, names = load_inputs(
            _reference_files(files), max_side=settings.max_image_side, too_large=UploadTooLarge, before_decode=hold_place
        )
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    return _Inputs(image, mask, reference, ref_mask, names, steps, guidance, 0 if seed is None else seed), slot


def _refine_work(inp: _Inputs, extras: bool, detail: bool = False):
    """The refine job. ``extras``: the pictures a queued job offers (region, heat map; with several
    references the compare picture too); ``detail``: the per-reference figures and the source
    picture even for one reference (they always come with several)."""
    several = isinstance(inp.reference, list)

    def work(pipe) -> dict[str, Any]:
        out = pipe(
            inp.image, inp.mask, inp.reference, inp.reference_mask, num_inference_steps=inp.steps,
            guidance_scale=inp.guidance, seed=inp.seed, names=inp.names,
        )
        outputs: dict[str, Any] = {
            "result.png": _png(out.image),
            "info": {
                "timings": {k: round(v, 4) for k, v in out.timings.items()},
                "random_weights": bool(out.random_weights),
                "crop_box": list(out.crop_box.as_tuple()),
                "size": [out.image.width, out.image.height],
                # (what the command line prints: how it aligned, how much of the mask the warp gave, its notes)
                "alignment": out.alignment,
                "warp_fraction": _finite(out.warp_fraction),
                "notes": list(out.notes),
                "settings": {"seed": inp.seed, "steps": inp.steps, "guidance": inp.guidance},  # (None: the model's default)
            },
        }
        refs = inp.reference if several else [inp.reference]
        if several or detail:
            outputs["info"].update(_references_info(out, inp.names, len(refs)))
            if out.source is not None:
                from ..visualize import source_overlay

                outputs["source.png"] = _png(source_overlay(out.image, out.source))
        if extras:
            guide = refs[out.guide] if 0 <= out.guide < len(refs) else refs[0]
            if out.region is not None:
                outputs["correspondence.png"] = _mask_png(out.region)
            heat = _heat_png(to_rgb(guide), out.heatmap, out.region)
            if heat is not None:
                outputs["heatmap.png"] = heat
            if several:
                from ..visualize import compare_picture

                picture = compare_picture(to_rgb(inp.image), inp.mask, [to_rgb(r) for r in refs], out)
                outputs["compare.png"] = _png(picture)
        return outputs

    return work


def _finite(x, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), digits)


def _references_info(out, names: dict[str, Any], count: int) -> dict[str, Any]:
    """What each reference gave (JSON-ready): ``guide`` (index from 0 of the reference that guided the
    model), ``references`` (one entry each, in the order sent), ``notes`` and ``warp_fraction``."""
    from ..visualize import SOURCE_COLOURS

    ref_names = names.get("reference")
    ref_names = ref_names if isinstance(ref_names, list) else [ref_names]
    per = list(getattr(out, "references", None) or [])
    entries = []
    for i in range(count):
        r = per[i] if i < len(per) else None
        colour = SOURCE_COLOURS[i % len(SOURCE_COLOURS)]
        entries.append({
            "number": i + 1,
            "name": ref_names[i] if i < len(ref_names) else None,
            "colour": "#%02x%02x%02x" % colour,
            "guided": i == out.guide,
            "warp_fraction": _finite(r.warp_fraction if r is not None else (out.warp_fraction if count == 1 else 0.0)),
            "ring_ncc": _finite(r.ring_ncc) if r is not None else None,
            "alignment": r.alignment if r is not None else out.alignment,
            "notes": list(r.notes) if r is not None else [],
        })
    return {"guide": int(out.guide), "references": entries, "notes": list(out.notes),
            "warp_fraction": _finite(out.warp_fraction), "alignment": out.alignment}


def _align_work(inp: _Inputs, extras: bool):
    def work(pipe) -> dict[str, Any]:
        res = pipe.align(inp.image, inp.mask, inp.reference, inp.reference_mask, seed=inp.seed, names=inp.names)
        corr = _mask_png(res.region)
        outputs: dict[str, Any] = {
            "result.png": corr,
            "correspondence.png": corr,
            "heatmap.png": _heat_png(to_rgb(inp.reference), res.heatmap, res.region),
            "info": {"timestep": res.alignment_timestep, "layer": res.alignment_layer, "pixels": int(res.region.sum()),
                     "random_weights": bool(getattr(pipe, "random_weights", False))},
        }
        return outputs

    return work


@dataclass
class _DetectInputs:
    image: Image.Image
    reference: Image.Image
    reference_mask: np.ndarray | None
    names: dict[str, str]
    method: str
    threshold: float | None


def _prepare_detect(files: dict[str, tuple[bytes, str]], values: dict[str, str], settings: ServerSettings, reserve) -> tuple[_DetectInputs, Slot]:
    """As :func:`_prepare` for a detection (no mask): the values and the headers (sizes) are checked,
    a place in the queue is held, then the pixels are decoded and checked (runs in a worker thread)."""
    method = values.get("method", "").strip() or "learned"
    threshold = _float_value(values, "threshold")
    check_detect_settings(method, threshold)
    names = {role: str(name) for role, (_, name) in files.items()}
    sizes = {
        role: open_image(data, role, names[role], max_side=settings.max_image_side, too_large=UploadTooLarge).size
        for role, (data, _) in files.items()
    }
    check_input_sizes(sizes, names)
    for role in ("image", "reference"):
        if min(sizes[role]) < DETECT_MIN_SIDE:
            w, h = sizes[role]
            raise InputError(f"{role} '{names[role]}': {w}x{h} is too small to detect artifacts (need at least {DETECT_MIN_SIDE}x{DETECT_MIN_SIDE})")
    slot = reserve()
    try:
        decoded = {role: decode_upload(files[role][0], role, names[role], settings.max_image_side) for role in files}
        image, reference = decoded["image"], decoded["reference"]
        if "reference_mask" in decoded:
            ref_mask = to_mask(decoded["reference_mask"])
            label = f"reference_mask '{names['reference_mask']}'"
            if ref_mask.shape != (reference.height, reference.width):
                raise InputError(f"{label}: size {ref_mask.shape[1]}x{ref_mask.shape[0]} does not match the reference {reference.width}x{reference.height}")
            if not ref_mask.any():
                raise InputError(f"{label}: reference mask is empty (no object)")
        else:
            ref_mask = alpha_mask(reference)
            if ref_mask is not None and not ref_mask.any():
                raise InputError(
                    f"reference '{names['reference']}': its alpha channel is empty (fully transparent: no object to compare with); "
                    "give a reference mask or a reference whose object is opaque"
                )
    except BaseException:
        slot.release()
        raise
    return _DetectInputs(image, reference, ref_mask, names, method, threshold), slot


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _detect_work(inp: _DetectInputs, matcher):
    """``matcher()``: the ALIKED model or None (loaded once, on the worker)."""

    def work(pipe) -> dict[str, Any]:
        from ..pipelines.detect import detect

        aliked, why = matcher()
        det = detect(inp.image, inp.reference, inp.reference_mask, aliked=aliked, method=inp.method, threshold=inp.threshold)
        notes = [] if aliked is not None else [f"ALIKED matcher unavailable ({why}): detection uses SIFT alone"]
        notes += det.info.get("notes", [])
        if "note" in det.info:
            notes.append(det.info["note"])
        elif not det.mask.any():
            notes.append("the image agrees with the reference everywhere it could be compared: nothing proposed (paint the mask by hand)")
        info = det.info
        h, w = det.mask.shape
        return {
            "mask.png": _mask_png(det.mask),
            "heatmap.png": _heat_png(to_rgb(inp.image), det.heatmap, det.mask),
            "info": {
                "size": [w, h],
                "pixels": int(det.mask.sum()),
                "fraction": round(float(det.mask.mean()), 6),
                "empty": not bool(det.mask.any()),
                "method": inp.method,
                "matcher": "sift+aliked" if aliked is not None else "sift",
                "source": info.get("source"),
                "inliers": None if info.get("inliers") is None else int(info["inliers"]),
                "mirrored": None if info.get("mirrored") is None else bool(info["mirrored"]),
                "threshold": None if info.get("threshold") is None else float(info["threshold"]),
                "compared": None if info.get("compared") is None else float(info["compared"]),
                "notes": notes,
            },
        }

    return work


def _matcher(app):
    """A getter for the app's ALIKED matcher for detection, loaded on first use, once: (the model, "")
    or (None, the one-line reason it cannot be had: no weights found, a file that is not safetensors,
    another model's weights; detection then runs on SIFT alone and its note says why)."""
    import threading

    lock = threading.Lock()

    def get():
        with lock:
            if not hasattr(app.state, "detect_matcher"):
                from ..models.aliked import load_aliked

                app.state.detect_matcher = load_aliked()
            return app.state.detect_matcher

    return get


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


# ---------------------------------------------------------------------------------------------------- middleware
class _Guard:
    """Pure ASGI middleware: the Host header check (400, against DNS rebinding), request body limit
    (413) and time limit (408), and the same-origin check for POSTs (403)."""

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not host_allowed(headers.get("host"), self.settings.allowed_hosts):
            host = headers.get("host", "")
            return await _send_json(send, 400, {
                "error": f"Host header '{host}' is not a name this server answers to (start it with --allow-host "
                         f"{host.rsplit(':', 1)[0] or 'NAME'} to allow it)",
            })
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.settings.max_upload_bytes
        if self.settings.check_origin and "origin" in headers:
            origin = headers["origin"]
            if urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
                return await _send_json(send, 403, {"error": f"cross-origin request from '{origin}' refused"})
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await _send_json(send, 400, {"error": "invalid Content-Length header"})
            if int(length) > limit:
                return await _send_json(send, 413, {"error": _too_large(int(length), limit)})
        received = 0
        started = False
        deadline: float | None = None

        async def limited_receive():
            nonlocal received, deadline
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.settings.body_timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise _BodyTimeout() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, {"error": _too_large(received, limit)})
        except _BodyTimeout:
            logger.info("request body not received within %g s (%d bytes arrived): 408", self.settings.body_timeout_s, received)
            if not started:
                await _send_json(send, 408, {
                    "error": f"the request body did not arrive within this server's limit of {self.settings.body_timeout_s:g} s",
                }, {"Connection": "close"})


def _too_large(size: int, limit: int) -> str:
    return f"request body of {size} bytes is over this server's limit of {limit} bytes ({limit / 2**20:.1f} MiB)"


async def _send_json(send, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------------- errors
def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


#: where a refused request's reason is logged: uvicorn's own error log (shown at the server's
#: --log-level, beside its access line "POST /api/refine 400 Bad Request", which has no reason)
access_reasons = logging.getLogger("uvicorn.error")


def _refused(request, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A 4xx answer, its reason also logged in one line (the server's operator sees why)."""
    access_reasons.info("%s %s refused (%d): %s", request.method, request.url.path, status, message)
    return _error(status, message, headers)


async def _http_exc(request, exc):
    return _refused(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _validation_exc(request, exc):
    return _refused(request, 400, "; ".join(str(e.get("msg", e)) for e in exc.errors()) or "invalid request")


async def _own_exc(request, exc):
    return _refused(request, exc.status, str(exc), exc.headers)


async def _input_exc(request, exc):
    return _refused(request, 413 if isinstance(exc, UploadTooLarge) else 400, str(exc))


async def _gone(request, exc):  # the client went away mid-upload: nobody to answer, nothing to log loudly
    logger.info("client disconnected before its request to %s was complete", request.url.path)
    return Response(status_code=499)


async def _any_exc(request, exc):  # last resort: still JSON, still serving
    logger.exception("unhandled error on %s", request.url.path)
    return _error(500, f"internal error: {type(exc).__name__}: {exc}")


# every error is JSON {"error": ...}; the most specific handler wins
EXCEPTION_HANDLERS = {
    StarletteHTTPException: _http_exc,
    RequestValidationError: _validation_exc,
    _HTTPError: _own_exc,
    InputError: _input_exc,
    ClientDisconnect: _gone,
    Exception: _any_exc,
}


# ---------------------------------------------------------------------------------------------------- routes
# Every route finds the job runner and the limits on ``request.app.state`` (set by create_app).
def _runner(request: Request) -> JobRunner:
    return request.app.state.runner


def _settings(request: Request) -> ServerSettings:
    return request.app.state.settings


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; connect-src 'self' blob:; frame-ancestors 'none'",
}

pages = APIRouter()  # the web app and the health check


@pages.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def index():
    return HTMLResponse(INDEX_HTML, headers=SECURITY_HEADERS)


@pages.get("/favicon.ico")
async def favicon():
    return Response(status_code=204)


_ENVIRONMENT: dict | None = None  # what this server's results are made with (create_app)


def _health_payload(runner: JobRunner, settings: ServerSettings) -> dict:
    loaded = runner.pipe is not None
    return {
        "status": "ok" if loaded else "loading",
        "model": settings.model_name,
        "random_weights": bool(getattr(runner.pipe, "random_weights", False)) if loaded else None,
        "environment": _ENVIRONMENT or environment(),  # (library versions, CPU, commit: what this server's results are made with)
        "queue": runner.counts(),
        "limits": {**{k: v for k, v in asdict(settings).items() if k != "model_name"}, "max_references": MAX_REFERENCES},
    }


@pages.api_route("/api/health", methods=["GET", "HEAD"])
async def health(request: Request):
    runner = _runner(request)
    payload = _health_payload(runner, _settings(request))
    if runner.pipe is None:
        payload["error"] = "model is not loaded yet"
        return JSONResponse(payload, status_code=503)
    return payload


async def _submit(request: Request, kind: str, extras: bool, allow_mode: bool, detail: bool = False) -> Job:
    """Read and check a refine / align upload and queue its job (503 when the model or a place is
    missing). ``detail``: a refine gives the per-reference figures and the source picture even for
    one reference."""
    runner, settings = _ready(request)
    with _full_queue_is_503(settings):
        runner.check_room()  # a full server refuses before reading the upload
        value_fields = VALUE_FIELDS + (("mode",) if allow_mode else ())
        files, values = await _read_form(request, settings, FILE_FIELDS, REQUIRED_FILES, value_fields, REPEATABLE)
        if allow_mode:
            kind = values.pop("mode", kind).strip() or kind
            if kind not in ("refine", "align"):
                raise InputError(f"mode must be 'refine' or 'align', got {kind!r}")
        if kind == "align" and len(files.get("reference", ())) > 1:
            raise InputError(f"align takes one reference, got {len(files['reference'])} 'reference' fields (several references are for refine)")
        # headers and sizes, then a place in the queue, then the pixels
        inp, slot = await run_in_threadpool(_prepare, files, values, settings, runner.reserve)
        del files
        work = _refine_work(inp, extras, detail) if kind == "refine" else _align_work(inp, extras)
        with slot:
            return runner.submit(Job(kind=kind, work=work, timeout_s=settings.job_timeout_s), slot)


def _ready(request: Request):
    """(the job runner, the settings); 503 while the model is still loading."""
    runner = _runner(request)
    if runner.pipe is None:
        raise _HTTPError(503, "model is not loaded yet; retry in a moment", {"Retry-After": "5"})
    return runner, _settings(request)


@contextmanager
def _full_queue_is_503(settings: ServerSettings):
    """A full queue (at the room check or when the place is taken) is a 503 with a Retry-After."""
    try:
        yield
    except QueueFull as e:
        raise _HTTPError(503, str(e), {"Retry-After": str(max(1, math.ceil(settings.job_timeout_s / 10)))}) from None


async def _wait(job: Job, request: Request) -> None:
    """Until the job ends; a client that goes away cancels it."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def wake():
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    job.on_done(wake)
    while not done.done():
        await asyncio.wait({done}, timeout=1.0)
        if not done.done() and await request.is_disconnected():
            job.cancel("cancelled: the client disconnected")
            await asyncio.wait({done}, timeout=_settings(request).job_timeout_s)
            break


async def _submit_detect(request: Request) -> Job:
    """As :func:`_submit` for a detection: the same capacity check, form reading and queue place."""
    runner, settings = _ready(request)
    with _full_queue_is_503(settings):
        runner.check_room()  # a full server refuses before reading the upload
        files, values = await _read_form(request, settings, DETECT_FILE_FIELDS, DETECT_REQUIRED, DETECT_VALUE_FIELDS)
        inp, slot = await run_in_threadpool(_prepare_detect, files, values, settings, runner.reserve)
        del files
        with slot:
            return runner.submit(Job(kind="detect", work=_detect_work(inp, request.app.state.matcher), timeout_s=settings.job_timeout_s), slot)


def _job_failure(job: Job) -> JSONResponse:
    return _error(job.status_code, job.error or "job failed")


direct = APIRouter()  # refine / align answered in the same request


@direct.post("/api/refine")
async def refine(request: Request, output: str = "png"):
    """The refined image as ``image/png`` (``?output=json``: JSON with the image and the source
    picture as base64 PNGs, the figures of each reference, the timings and notes)."""
    if output not in ("png", "json"):
        raise InputError(f"output must be 'png' or 'json', got {output!r}")
    job = await _submit(request, "refine", extras=False, allow_mode=False, detail=output == "json")
    await _wait(job, request)
    _runner(request).forget(job)  # answered here: keep no copy of the result
    if job.state != "done":
        return _job_failure(job)
    info = job.outputs.get("info", {})
    if output == "json":
        payload = {"image": _b64(job.outputs["result.png"]), "source": _b64(job.outputs.get("source.png"))}
        payload.update(info)
        return JSONResponse(payload, headers={"X-Job-Id": job.id, "Cache-Control": "no-store"})
    headers = {
        "Content-Disposition": 'inline; filename="refined.png"',
        "X-Job-Id": job.id,
        "X-Timings": json.dumps(info.get("timings", {})),
        "X-Random-Weights": "true" if info.get("random_weights") else "false",
    }
    if "references" in info:  # several references: which guided, and what each gave (ASCII JSON)
        headers["X-Guide"] = str(info["guide"])
        headers["X-References"] = json.dumps(
            [{"warp_fraction": r["warp_fraction"], "ring_ncc": r["ring_ncc"]} for r in info["references"]], separators=(",", ":")
        )
    return Response(job.outputs["result.png"], media_type="image/png", headers=headers)


@direct.post("/api/align")
async def align(request: Request, output: str = "mask"):
    if output not in ("mask", "heatmap"):
        raise InputError(f"output must be 'mask' or 'heatmap', got {output!r}")
    job = await _submit(request, "align", extras=True, allow_mode=False)
    await _wait(job, request)
    _runner(request).forget(job)
    if job.state != "done":
        return _job_failure(job)
    name = "correspondence.png" if output == "mask" else "heatmap.png"
    headers = {"Content-Disposition": f'inline; filename="{name}"', "X-Job-Id": job.id}
    return Response(job.outputs[name], media_type="image/png", headers=headers)


@direct.post("/api/detect")
async def detect_mask(request: Request):
    """The proposed artifact mask (no mask painted): JSON with ``mask`` (base64 PNG, white =
    artifact, the image's size), ``heatmap`` (base64 PNG: the disagreement over the image, the
    proposal outlined), ``size``, ``pixels``, ``empty``, the fit's figures and ``notes``."""
    job = await _submit_detect(request)
    await _wait(job, request)
    _runner(request).forget(job)
    if job.state != "done":
        return _job_failure(job)
    payload = {"mask": _b64(job.outputs["mask.png"]), "heatmap": _b64(job.outputs.get("heatmap.png"))}
    payload.update(job.outputs.get("info", {}))
    return JSONResponse(payload, headers={"X-Job-Id": job.id, "Cache-Control": "no-store"})


jobs = APIRouter()  # queued jobs: create, poll, cancel, download


@jobs.post("/api/jobs", status_code=202)
async def create_job(request: Request):
    job = await _submit(request, "refine", extras=True, allow_mode=True)
    return JSONResponse(job.status(_runner(request).queue_position(job)), status_code=202)


def _find(runner: JobRunner, job_id: str) -> Job:
    job = runner.get(job_id)
    if job is None:
        raise _HTTPError(404, f"no job '{job_id}' (unknown, or its results were dropped to make room)")
    return job


@jobs.get("/api/jobs/{job_id}")
async def job_status(job_id: str, request: Request):
    runner = _runner(request)
    job = _find(runner, job_id)
    return job.status(runner.queue_position(job))


@jobs.delete("/api/jobs/{job_id}")
async def job_cancel(job_id: str, request: Request):
    runner = _runner(request)
    job = _find(runner, job_id)
    runner.cancel(job)
    return job.status(runner.queue_position(job))


@jobs.get("/api/jobs/{job_id}/{name}")
async def job_output(job_id: str, name: str, request: Request):
    job = _find(_runner(request), job_id)
    if job.state != "done":
        raise _HTTPError(409, f"job '{job_id}' is {job.state}" + (f": {job.error}" if job.error else ""))
    if name not in job.outputs or not name.endswith(".png"):
        raise _HTTPError(404, f"job '{job_id}' has no output '{name}' (has: {', '.join(job.status()['outputs'])})")
    return Response(job.outputs[name], media_type="image/png", headers={"Cache-Control": "no-store"})


previews = APIRouter()  # any upload as the PNG the model will see


@previews.post("/api/preview")
async def preview(request: Request):
    settings = _settings(request)
    files, values = await _read_form(request, settings, ("file",), ("file",), ("role",))
    role = values.get("role", "image").strip() or "image"
    if role not in ("image", "mask", "reference", "reference_mask"):
        raise InputError(f"role must be image, mask, reference or reference_mask, got {role!r}")
    data, filename = files["file"]

    def convert() -> tuple[bytes, int, int]:
        img = decode_upload(data, role, filename, settings.max_image_side)
        if role.endswith("mask"):
            return _mask_png(to_mask(img)), img.width, img.height
        return _png(to_rgb(img)), img.width, img.height

    png, w, h = await run_in_threadpool(convert)
    return Response(png, media_type="image/png", headers={"X-Image-Size": f"{w}x{h}", "Cache-Control": "no-store"})


# ---------------------------------------------------------------------------------------------------- the app
def create_app(pipe, settings: ServerSettings | None = None):
    """The FastAPI app serving ``pipe`` (a :class:`RefineByAlignPipeline`; None = not loaded yet:
    health answers 503 until ``app.state.runner.set_pipe(pipe)``).

    The pipeline's ``progress_bar`` is routed through the running job (progress and time limit);
    calls made outside a job keep the original bar."""
    global _ENVIRONMENT
    settings = settings or ServerSettings()
    runner = JobRunner(pipe, max_queue=settings.max_queue, max_results=settings.max_results)
    _ENVIRONMENT = environment()  # (once, here: health answers from it without calling git in its handler)

    @asynccontextmanager
    async def lifespan(app):
        yield
        runner.close()

    app = FastAPI(title="refine-by-align", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.runner = runner
    app.state.settings = settings
    app.state.matcher = _matcher(app)
    app.add_middleware(_Guard, settings=settings)
    for exc_class, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
    for router in (pages, direct, jobs, previews):
        app.include_router(router)
    return app
