"""Run several methods over one case folder and compare them (Tables 1 and 3, Fig. 6 of the paper).

:func:`run_all` writes::

    DIR/<method>/...             each method's run_bench output (metrics.json, outputs, contact_sheet.png)
    DIR/report.json              {"methods", "kinds", "metrics", "results": {method: {kind: {...}}}, "best", ...}
    DIR/report.md                one markdown table per kind; best value per metric in **bold**
    DIR/contact_<kind>.png       Fig. 6-style sheet per kind: rows = cases; columns = input | target |
                                 reference | each aligning method's region on the reference | each
                                 method's output (zoom-in crop)
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io import InputError, load_mask, save_image_atomic, write_atomic
from ..loading import load_pipeline
from ..visualize import (
    GREEN,
    MAGENTA,
    RED,
    contact_sheet,
    fit_square,
    label_tile,
    outline_mask,
    placeholder_tile,
    render_heatmap_overlay,
    sheet_row,
)
from ..zoom import Box, zoom_box
from .bench import (
    CONTACT_SHEET_MAX_ROWS,
    _fmt,
    pipeline_facts,
    run_bench,
    run_config,
    write_json_atomic,
)
from .cases import Case, check_case_dir, list_case_dirs, load_case
from .identity import CLIPEmbedder, DinoEmbedder, load_captions
from .registry import METHODS, PIPELINE_METHODS, get_method

__all__ = [
    "run_all",
    "resolve_methods",
    "build_report",
    "report_markdown",
    "render_comparison_sheet",
    "REPORT_METRICS",
    "LOWER_IS_BETTER",
]


#: Summary keys compared in the report, in column order.
REPORT_METRICS = ("miou", "psnr", "ssim", "field_px", "clip_t", "clip_i", "dino_i", "seconds_per_case")
#: Metrics where lower is better (all others: higher is better).
LOWER_IS_BETTER = frozenset({"seconds_per_case", "field_px"})
_LABELS = {
    "miou": "mIoU",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "field_px": "field err (px)",
    "clip_t": "CLIP-T",
    "clip_i": "CLIP-I",
    "dino_i": "DINO-I",
    "seconds_per_case": "s/case",
}
_SPEC = {"miou": ".3f", "psnr": ".2f", "ssim": ".3f", "field_px": ".3f", "clip_t": ".2f", "clip_i": ".2f", "dino_i": ".2f", "seconds_per_case": ".2f"}
_TILE = 128


def resolve_methods(methods: str | Sequence[str]) -> list[str]:
    """``"all"`` -> every registered method (registry order); ``"a,b"`` or a list -> those, checked.
    Raises :class:`InputError` naming an unknown method and the choices."""
    if isinstance(methods, str):
        names = list(METHODS) if methods.strip() == "all" else [m.strip() for m in methods.split(",") if m.strip()]
    else:
        names = [str(m) for m in methods]
    if not names:
        raise InputError("no method given")
    for n in names:
        if n not in METHODS:
            raise InputError(f"unknown method '{n}' (choose from: all, {', '.join(METHODS)})")
    seen: list[str] = []
    for n in names:
        if n not in seen:
            seen.append(n)
    return seen


# ----------------------------------------------------------------------------------------- report


def _kinds(results: dict[str, dict[str, Any]]) -> list[str]:
    kinds: list[str] = []
    for summ in results.values():
        for k in summ:
            if k not in kinds:
                kinds.append(k)
    return ["ALL"] + sorted(k for k in kinds if k != "ALL") if "ALL" in kinds else sorted(kinds)


def _best(values: dict[str, float | None], metric: str) -> list[str]:
    """Methods holding the best value of ``metric`` (ties at display precision all count)."""
    shown = {m: round(v, int(_SPEC[metric][1:-1])) for m, v in values.items() if v is not None}
    if not shown:
        return []
    target = min(shown.values()) if metric in LOWER_IS_BETTER else max(shown.values())
    return [m for m, v in shown.items() if v == target]


def build_report(results: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """``results``: method -> run_bench summary (kind -> metrics). Returns the report dict."""
    methods = list(results)
    kinds = _kinds(results)
    best = {
        kind: {metric: _best({m: results[m].get(kind, {}).get(metric) for m in methods}, metric) for metric in REPORT_METRICS}
        for kind in kinds
    }
    cases = {kind: max((results[m].get(kind, {}).get("cases") or 0) for m in methods) for kind in kinds}
    return {
        **extra,
        "methods": methods,
        "kinds": kinds,
        "metrics": list(REPORT_METRICS),
        "higher_is_better": {m: m not in LOWER_IS_BETTER for m in REPORT_METRICS},
        "cases": cases,
        "results": {m: {kind: results[m].get(kind) for kind in kinds} for m in methods},
        "best": best,
    }


def report_markdown(report: dict[str, Any]) -> str:
    """One markdown table per kind: rows = methods, columns = metrics; best per column in bold."""
    lines = ["# Benchmark report", ""]
    if report.get("cases_dir"):
        used = (report.get("config") or {}).get("matchers_used")
        lines.append(f"Cases: `{report['cases_dir']}`; model: `{report.get('model') or '-'}`; "
                     + (f"matchers: `{used}`; " if used else "")
                     + f"CLIP: `{report.get('clip') or '-'}`; DINO: `{report.get('dino') or '-'}`.")
        lines.append("")
    lines += [
        (
            "Best value per metric and kind in **bold**; higher is better for every metric except field err "
            "and s/case. field err: the method's correspondence against true_field.npz inside the mask, "
            "reference px (mean, each pixel's capped at 3 px), over the cases it gives a field on. "
            "`-`: not computed (no correspondence.png for mIoU, no target.png for PSNR/SSIM, no true_field.npz "
            "or no field for field err, no model or "
            "caption for CLIP/DINO, no alignment for mIoU of non-aligning methods). `fallbacks`: cases where "
            "the method fell back (keypoint: Telea; oracle-align: no true region, aligned by the model)."
        ),
        "",
    ]
    head = ["method"] + [f"{_LABELS[m]} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in report["metrics"]] + ["fallbacks"]
    for kind in report["kinds"]:
        n = report["cases"].get(kind, 0)
        lines += [f"## {kind} ({n} case{'' if n == 1 else 's'})", ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---|" + "---:|" * (len(head) - 1))
        for m in report["methods"]:
            row = report["results"][m].get(kind) or {}
            cells = [f"`{m}`"]
            for metric in report["metrics"]:
                text = _fmt(row.get(metric), _SPEC[metric])
                if row.get(metric) is not None and m in report["best"][kind][metric]:
                    text = f"**{text}**"
                cells.append(text)
            cells.append(str(row.get("fallbacks", 0) or 0))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    sheets = report.get("contact_sheets") or {}
    if sheets:
        lines += ["## Contact sheets", ""]
        lines += [f"- {kind}: `{name}`" for kind, name in sheets.items()]
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- sheets


def _crop_tile(img: Image.Image, box: Box, size: int) -> Image.Image:
    return img.convert("RGB").crop(box.as_tuple()).resize((size, size), Image.BILINEAR)


def _read_region(path: Path) -> np.ndarray | None:
    return load_mask(path, "region") if path.is_file() else None


def render_comparison_sheet(
    cases: Sequence[Case],
    methods: Sequence[str],
    out_root: str | os.PathLike,
    records: dict[str, dict[str, dict[str, Any]]] | None = None,
    title: str = "",
    tile: int = _TILE,
) -> Image.Image:
    """A Fig. 6-style sheet from the outputs ``run_all`` wrote under ``out_root/<method>/<case>/``.

    Rows = cases. Columns: input zoom-in crop (mask outlined red) | target crop (when any case has
    one) | reference (true region outlined green) | for every method that predicted a region on some
    case: the reference with that region in magenta (true region outlined green) | for every
    method: its output, same crop. ``records``: method -> case id -> run_bench case record (scores
    for the labels)."""
    out_root = Path(out_root)
    records = records or {}
    aligning = [m for m in methods if any((out_root / m / c.id / "correspondence.png").is_file() for c in cases)]
    with_target = any(c.target is not None for c in cases)
    rows = []
    for case in cases:
        box = zoom_box(case.mask, grow=2.0, min_size=32)
        crop_mask = case.mask[box.y0 : box.y1, box.x0 : box.x1]
        tiles = [label_tile(outline_mask(_crop_tile(case.image, box, tile), crop_mask, RED), f"{case.id} input")]
        if with_target:
            tiles.append(label_tile(_crop_tile(case.target, box, tile), "target") if case.target is not None else label_tile(placeholder_tile(tile, "no target"), "target"))
        ref_tile, place = fit_square(case.reference, tile)
        if case.region is not None:
            ref_tile = outline_mask(ref_tile, case.region, GREEN, place=place)
        tiles.append(label_tile(ref_tile, "reference" + (" + truth" if case.region is not None else "")))
        for m in aligning:
            region = _read_region(out_root / m / case.id / "correspondence.png")
            if region is None:
                t, _ = fit_square(case.reference, tile)
                label = f"{m}: no region"
            else:
                t, _ = fit_square(render_heatmap_overlay(case.reference, region, alpha=0.5, color=MAGENTA), tile)
                label = f"{m} IoU {_fmt(records.get(m, {}).get(case.id, {}).get('miou'), '.2f')}"
            if case.region is not None:
                t = outline_mask(t, case.region, GREEN, place=place)
            tiles.append(label_tile(t, label))
        for m in methods:
            path = out_root / m / case.id / "output.png"
            rec = records.get(m, {}).get(case.id, {})
            if path.is_file():
                with Image.open(path) as im:
                    t = _crop_tile(im, box, tile)
                score = rec.get("psnr")
                label = f"{m} " + (f"{score:.1f}dB" if score is not None else f"CLIP-I {_fmt(rec.get('clip_i'), '.1f')}")
                label += " FB" if rec.get("fallback") else ""
            else:
                t, label = placeholder_tile(tile, "missing"), m
            tiles.append(label_tile(t, label))
        rows.append(sheet_row(tiles))
    return contact_sheet(rows, title)


def _safe(kind: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", kind) or "_"


# ----------------------------------------------------------------------------------------- runner


def run_all(
    cases_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    methods: str | Sequence[str] = "all",
    model: str | None = None,
    limit: int | None = None,
    clip: str | os.PathLike | None = None,
    dino: str | os.PathLike | None = None,
    captions: str | os.PathLike | dict | None = None,
    progress: bool = True,
    method_options: dict[str, dict[str, Any]] | None = None,
    max_sheet_rows: int = CONTACT_SHEET_MAX_ROWS,
    config: dict[str, Any] | None = None,
    matcher_weights: Any = None,
) -> dict[str, Any]:
    """Run every method of ``methods`` (``"all"``, ``"a,b,c"`` or a list) over ``cases_dir``.
    ``config``: the settings the run was made with (:func:`~.bench.run_config`), written into
    ``report.json`` and each method's ``metrics.json``; ``matcher_weights``: the ALIKED weights the
    shared pipeline uses (a .safetensors file, a folder or a matcher already loaded; :meth:`set_matcher`).

    Each method goes through :func:`run_bench` into ``output_dir/<method>/``; then ``report.json``,
    ``report.md`` and ``contact_<kind>.png`` (one per case kind) are written (see the module
    docstring). The case folders, method names and captions are checked before anything loads; the
    Refine-by-Align pipeline (``model``: folder, ``default``, or preset) is loaded once and shared
    by every method that needs it, and the CLIP / DINOv2 models once for all methods.
    ``method_options``: per-method keyword arguments for the factories (e.g. ``{"keypoint":
    {"ratio": 0.8}, "refine-by-align": {"num_inference_steps": 10}}``). Returns the report dict."""
    names = resolve_methods(methods)
    method_options = method_options or {}
    dirs = list_case_dirs(cases_dir, limit=limit)
    for d in dirs:
        check_case_dir(d)
    caption_map = load_captions(captions) if captions is not None else None
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    clip_e = CLIPEmbedder(clip) if clip is not None else None
    dino_e = DinoEmbedder(dino) if dino is not None else None
    pipe = None
    if any(n in PIPELINE_METHODS for n in names):
        pipe = load_pipeline(model or "default")
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        if matcher_weights is not None:
            pipe.require_matcher(matcher_weights)

    run_settings = dict(config) if config is not None else {"methods": names, "limit": limit, "model": model, "method_options": method_options}
    summaries: dict[str, dict[str, Any]] = {}
    records: dict[str, dict[str, dict[str, Any]]] = {}
    said: set[str] = set()
    matchers: dict[str, Any] = {}  # the dense alignment's matchers, where a method runs it
    for n in names:
        opts = dict(method_options.get(n, {}))
        if n in PIPELINE_METHODS:
            opts["pipeline"] = pipe
        meth = get_method(n, model=model, **opts)
        facts, lines = pipeline_facts(meth)
        for line in lines:  # (each said once, not once per method on the shared pipeline)
            if line not in said:
                said.add(line)
                print(line, file=sys.stderr, flush=True)
        if facts.get("matchers_used"):
            matchers.setdefault("matchers_used", facts["matchers_used"])
            matchers.setdefault("matcher_weights_used", facts["matcher_weights_used"])
        res = run_bench(
            cases_dir, out / n, method=meth, limit=limit, progress=progress, clip=clip_e, dino=dino_e, captions=caption_map,
            max_sheet_rows=max_sheet_rows, config={**run_settings, "method": n, "method_options": method_options.get(n)}, say_notes=False,
        )
        summaries[n] = res["summary"]
        records[n] = {r["case"]: r for r in res["cases"]}

    cases_by_kind: dict[str, list[Path]] = {}
    first = records[names[0]]
    for d in dirs:
        cases_by_kind.setdefault(str(first[d.name]["kind"]), []).append(d)
    sheets = {kind: f"contact_{_safe(kind)}.png" for kind in sorted(cases_by_kind)}
    report = build_report(
        summaries,
        config=run_config(cases_dir, **run_settings, **matchers),
        cases_dir=str(cases_dir),
        model=None if pipe is None else str(model or "default"),
        random_weights=bool(getattr(pipe, "random_weights", False)),
        clip=None if clip is None else str(clip),
        dino=None if dino is None else str(dino),
        captions=None if captions is None or isinstance(captions, dict) else str(captions),
        contact_sheets=sheets,
    )
    write_json_atomic(report, out / "report.json")
    write_atomic(out / "report.md", report_markdown(report))
    for kind, ds in sorted(cases_by_kind.items()):
        shown = ds[:max_sheet_rows]
        cases = [load_case(d) for d in shown]
        title = f"kind: {kind}   cases: {len(ds)}" + (f" (first {len(shown)} shown)" if len(shown) < len(ds) else "")
        title += "   columns: input | target | reference (truth green) | regions per method (magenta) | outputs"
        sheet = render_comparison_sheet(cases, names, out, records, title)
        save_image_atomic(sheet, out / sheets[kind])
    return report
