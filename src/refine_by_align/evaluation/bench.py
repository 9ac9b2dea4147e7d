"""The benchmark runner: run a method over a case folder, score it, write outputs and a contact sheet.

Output layout (``RESULTS``)::

    RESULTS/<case_id>/output.png           refined image
    RESULTS/<case_id>/correspondence.png   the predicted region M* on the reference (aligning methods only)
    RESULTS/metrics.json                   {"method", "summary": {"ALL": ..., "<kind>": ...}, "cases": [...]}
                                           (identity metrics clip_t / clip_i / dino_i: see identity.py)
    RESULTS/contact_sheet.png              one row per case: input | reference | output | target
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io import save_image_atomic
from ..pipelines.pipeline import forget_remembered
from ..provenance import environment, plain, write_record
from ..visualize import (
    GREEN,
    MAGENTA,
    RED,
    contact_sheet,
    label_tile,
    outline_mask,
    placeholder_tile,
    render_heatmap_overlay,
    resize_tile,
    sheet_row,
)
from .cases import Case, check_case_dir, list_case_dirs, load_case
from .identity import IDENTITY_KEYS, IdentityScorer
from .methods import Method, MethodOutput
from .registry import get_method
from .metrics import box_ssim, field_error, iou, masked_psnr

__all__ = [
    "run_bench",
    "run_config",
    "summarize",
    "render_heatmap_overlay",
    "render_contact_row",
    "assemble_contact_sheet",
    "write_json_atomic",
    "CONTACT_SHEET_MAX_ROWS",
    "TILE_HEIGHT",
]

CONTACT_SHEET_MAX_ROWS = 24
TILE_HEIGHT = 160


# ----------------------------------------------------------------------------------------- drawing


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render_contact_row(
    case: Case,
    output: MethodOutput,
    scores: dict[str, Any] | None = None,
    tile_height: int = TILE_HEIGHT,
    with_target_column: bool = True,
) -> Image.Image:
    """One contact-sheet row: input (mask outlined red) | reference (predicted region as a
    translucent colour, true one outlined green) | output | target (grey placeholder when absent)."""
    scores = scores or {}
    inp = outline_mask(resize_tile(case.image, tile_height), case.mask, RED)
    ref = case.reference
    if output.region is not None:
        ref = render_heatmap_overlay(ref, np.asarray(output.region, dtype=bool), alpha=0.45, color=MAGENTA)
    ref_tile = resize_tile(ref, tile_height)
    if case.region is not None:
        ref_tile = outline_mask(ref_tile, case.region, GREEN)
    tiles = [
        label_tile(inp, f"{case.id} [{case.kind}] input"),
        label_tile(ref_tile, f"reference  IoU {_fmt(scores.get('miou'), '.2f')}"),
        label_tile(
            resize_tile(output.image, tile_height),
            f"output  PSNR {_fmt(scores.get('psnr'), '.1f')}  SSIM {_fmt(scores.get('ssim'), '.2f')}"
            + (f"  CLIP-I {_fmt(scores.get('clip_i'), '.1f')}" if scores.get("clip_i") is not None else "")
            + (f"  DINO-I {_fmt(scores.get('dino_i'), '.1f')}" if scores.get("dino_i") is not None else "")
            + ("  FALLBACK" if scores.get("fallback") else ""),
        ),
    ]
    if with_target_column:
        tgt = resize_tile(case.target, tile_height) if case.target is not None else placeholder_tile(tile_height, "no target")
        tiles.append(label_tile(tgt, "target"))
    return sheet_row(tiles)


def assemble_contact_sheet(rows: Sequence[Image.Image], title: str = "") -> Image.Image:
    """Stack rows vertically (left-aligned) under an optional title line."""
    return contact_sheet(list(rows), title, empty_height=TILE_HEIGHT)


# ----------------------------------------------------------------------------------------- scoring


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def summarize(cases: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-group summary of per-case score dicts: ``{"ALL": {...}, "<kind>": {...}}`` (kinds sorted),
    each with ``cases``, ``miou``, ``psnr``, ``ssim``, ``clip_t``, ``clip_i``, ``dino_i`` (means over
    the cases that have them, else None), ``seconds_per_case`` and ``fallbacks`` (cases flagged
    ``fallback``); with a field scored (cases with ``true_field.npz``, methods that give a field),
    ``field_px`` / ``field_median_px`` (means of the cases' :func:`~.metrics.field_error`) and
    ``fields`` (the cases scored: a case whose method gave no field there has none)."""

    def one(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {
            "cases": len(rows),
            "miou": _mean([r.get("miou") for r in rows]),
            "psnr": _mean([r.get("psnr") for r in rows]),
            "ssim": _mean([r.get("ssim") for r in rows]),
            "field_px": _mean([r.get("field_px") for r in rows]),
            "field_median_px": _mean([r.get("field_median_px") for r in rows]),
            "fields": sum(1 for r in rows if r.get("field_px") is not None),
            **{k: _mean([r.get(k) for r in rows]) for k in IDENTITY_KEYS},
            "seconds_per_case": _mean([r.get("seconds") for r in rows]),
            "fallbacks": sum(1 for r in rows if r.get("fallback")),
        }

    out = {"ALL": one(cases)}
    for kind in sorted({str(r["kind"]) for r in cases}):
        out[kind] = one([r for r in cases if str(r["kind"]) == kind])
    return out


def _score(case: Case, output: MethodOutput, identity: IdentityScorer | None = None) -> dict[str, Any]:
    m = None
    if output.region is not None and case.region is not None:
        m = iou(output.region, case.region)
    psnr = ssim = None
    if case.target is not None:
        out = np.asarray(output.image.convert("RGB"))
        tgt = np.asarray(case.target)
        psnr = masked_psnr(out, tgt, case.mask)
        ssim = box_ssim(out, tgt, case.mask)
    ident = identity.score(case, output.image.convert("RGB"), output.region) if identity is not None else dict.fromkeys(IDENTITY_KEYS)
    err = None
    fld = getattr(output, "field", None)
    if fld is not None and case.true_field is not None:
        err = field_error(fld.box, fld.xy, case.true_field.origin, case.true_field.xy, case.mask)
    fields = {"field_px": None, "field_median_px": None} if err is None else {"field_px": err[0], "field_median_px": err[1]}
    return {"miou": m, "psnr": psnr, "ssim": ssim, **fields, **ident, "fallback": bool(getattr(output, "fallback", False))}


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write strict JSON (NaN/inf become null) via a temporary file and ``os.replace``."""
    write_record(path, obj)


def results_owner(metrics: str | os.PathLike) -> tuple[str | None, str] | None:
    """(method, model) that made the results file ``metrics`` (a ``metrics.json`` that
    :func:`run_bench` wrote; the model "default" where none was named), None where it is absent,
    unreadable or not such a file: nothing there that a new run would be mixed with."""
    import json

    try:
        prev = json.loads(Path(metrics).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(prev, dict):
        return None
    cfg = prev.get("config") if isinstance(prev.get("config"), dict) else {}
    return prev.get("method"), str(cfg.get("model") or "default")


def same_model(a: str | None, b: str | None) -> bool:
    """Whether two ``--model`` values name the same model: None is the default one, a preset is its
    name and a folder is the same however spelled (runs/x, ./runs/x)."""
    from ..config import CONFIG_NAMES

    def key(m: str | None) -> str:
        m = m or "default"
        return m if m in CONFIG_NAMES else os.path.abspath(m)

    return key(a) == key(b)


# ----------------------------------------------------------------------------------------- runner


def run_config(cases_dir: str | os.PathLike, **settings: Any) -> dict[str, Any]:
    """What a result was made with, for ``metrics.json`` / ``report.json`` / ``grid.json``: the
    cases folder (absolute), the given ``settings`` (JSON-safe: paths as strings, other objects by
    their repr), the versions of the package and the libraries that move its outputs, the CPU (its
    vector extensions) and the code's git commit (:func:`~refine_by_align.provenance.environment`),
    and the machine's CPU count. The pipeline's sampling seed is its default (``seed=0`` per case)
    unless a setting says otherwise."""
    return {
        "cases_dir": str(Path(cases_dir).resolve()),
        **{k: plain(v) for k, v in settings.items()},
        "seed": settings.get("seed", 0),
        **environment(),
        "cpus": os.cpu_count(),
    }


def pipeline_facts(meth: Any) -> tuple[dict[str, Any], list[str]]:
    """What a method's pipeline runs with, for the run's config, and the lines to say before its
    cases: ({"random_weights", "matchers_used", "matcher_weights_used"}, lines). A method without a
    pipeline (the classical baselines): ({}, []). ``matchers_used`` is the dense alignment's
    matchers ("sift+aliked", or "sift" where ALIKED's weights are not found, said in a note: the
    two differ by up to 7 dB on a nonrigid case), None for a method that runs no dense alignment
    (``single-stage``, Algorithm 1's ``--alignment attention``, ``feature-nn``, whose region is found
    outside the pipeline; ``oracle-align`` runs it on the cases without a true region only)."""
    pipe = getattr(meth, "pipeline", None)
    if pipe is None or not hasattr(pipe, "alignment_matchers"):
        return {}, []
    facts: dict[str, Any] = {"random_weights": bool(getattr(pipe, "random_weights", False))}
    lines = ["WARNING: the model has RANDOM weights: the pipeline methods' scores are meaningless"] if facts["random_weights"] else []
    call = getattr(meth, "call_kwargs", {}) or {}
    if getattr(meth, "align", False) and getattr(meth, "runs_dense_alignment", True) and call.get("alignment") in (None, "dense"):
        used = pipe.alignment_matchers(call.get("matchers"))  # (an unavailable matcher asked for: one InputError, before any case)
        facts.update(matchers_used=used["matchers"], matcher_weights_used=used["matcher_weights"])
        lines += [f"note: {n}" for n in used["notes"]]
    else:
        facts.update(matchers_used=None, matcher_weights_used=None)
    return facts, lines


def run_bench(
    cases_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    method: str | Method = "refine-by-align",
    limit: int | None = None,
    model: str | None = None,
    progress: bool = True,
    max_sheet_rows: int = CONTACT_SHEET_MAX_ROWS,
    clip: Any = None,
    dino: Any = None,
    captions: Any = None,
    method_options: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    say_notes: bool = True,
) -> dict[str, Any]:
    """Run ``method`` (a registered name or a :class:`Method`) on every case of ``cases_dir``.
    ``method_options``: keyword arguments for a named method's factory (e.g. ``num_inference_steps``).
    ``config``: the settings the run was made with (the command line's, :func:`run_config`),
    written into ``metrics.json`` as its ``config`` (default: the cases folder, the method, the
    limit and the model; the environment is always added, and for a method that runs the pipeline
    what :func:`pipeline_facts` finds: its matchers and whether its weights are random, said on
    stderr before the cases unless ``say_notes`` is False).

    Writes ``output_dir/<case_id>/output.png`` (+ ``correspondence.png``), ``metrics.json`` and
    ``contact_sheet.png``; the first case is run once untimed before the timed pass (a warm-up:
    its seconds held the first call's imports and compilations); returns the metrics dict (same content as ``metrics.json``). Cases are
    loaded (and validated) before the method is built, so bad data fails before a model loads.
    ``model`` is passed to the method factory when ``method`` is a name.

    Every case folder gets a cheap check (files present, image headers readable) before the method
    is built, so bad data fails before a model loads; pixels are then loaded one case at a time.

    Identity metrics (``clip_t``, ``clip_i``, ``dino_i``; None when not computed): ``clip`` / ``dino``
    are a transformers ``CLIPModel`` / ``Dinov2Model`` folder or hub id (safetensors), or an already
    built :class:`~refine_by_align.evaluation.identity.CLIPEmbedder` / ``DinoEmbedder``;
    ``captions`` a JSON / text file or dict mapping case id -> caption (CLIP-T; else
    ``meta.json``'s ``caption``). Each case record also has ``fallback`` (bool).
    """
    from tqdm.auto import tqdm

    dirs = list_case_dirs(cases_dir, limit=limit)
    for d in dirs:
        check_case_dir(d)
    identity = IdentityScorer(clip, dino, captions) if (clip is not None or dino is not None or captions is not None) else None
    meth: Method = get_method(method, model=model, **(method_options or {})) if isinstance(method, str) else method
    name = str(getattr(meth, "name", type(meth).__name__))
    facts, lines = pipeline_facts(meth)
    if say_notes:
        for line in lines:
            print(line, file=sys.stderr, flush=True)
    out_root = Path(output_dir)
    out_root.mkdir(parents=True, exist_ok=True)

    with_target = any((d / "target.png").exists() for d in dirs)
    rows: list[Image.Image] = []
    records: list[dict[str, Any]] = []
    if dirs:  # warm-up, untimed (lazy imports, compiled kernels, the allocator: seconds the first case's time held)
        first = load_case(dirs[0])
        try:
            meth(first)
        except Exception as e:
            e.add_note(f"while running method '{name}' on case '{first.id}' ({first.dir})")
            raise
        forget_remembered()  # (the first case is then timed as cold as the others)
    for d in tqdm(dirs, desc=name, unit="case", disable=not progress):
        case = load_case(d)
        try:
            t0 = time.perf_counter()
            output = meth(case)
            seconds = time.perf_counter() - t0
            if output.image.size != case.image.size:
                raise RuntimeError(
                    f"method '{name}' returned a {output.image.width}x{output.image.height} image for a "
                    f"{case.image.width}x{case.image.height} input"
                )
            case_out = out_root / case.id
            save_image_atomic(output.image.convert("RGB"), case_out / "output.png")
            if output.region is not None:
                corr = np.asarray(output.region, dtype=bool)
                save_image_atomic(Image.fromarray(corr.astype(np.uint8) * 255, "L"), case_out / "correspondence.png")
            scores = _score(case, output, identity)
            if len(rows) < max_sheet_rows:
                rows.append(render_contact_row(case, output, scores, with_target_column=with_target))
        except Exception as e:
            e.add_note(f"while running method '{name}' on case '{case.id}' ({case.dir})")
            raise
        records.append({"case": case.id, "kind": case.kind, **scores, "seconds": seconds})

    config = run_config(cases_dir, **(config if config is not None else {"method": name, "limit": limit, "model": model, "method_options": method_options}), **facts)
    result = {"method": name, "config": config, "summary": summarize(records), "cases": records}
    result = plain(result)
    write_json_atomic(result, out_root / "metrics.json")
    title = f"method: {name}   cases: {len(dirs)}" + (
        f" (first {len(rows)} shown)" if len(rows) < len(dirs) else ""
    )
    save_image_atomic(assemble_contact_sheet(rows, title), out_root / "contact_sheet.png")
    return result
