"""Several references at once: one alignment and one warp per reference, combined per pixel.

Beyond the paper (its future work, Sec. 5): a user often has more than one photo of the object
(two views, a close-up that shows only part of it), and may pass a wrong one by mistake. Each
reference is aligned on its own; per pixel of the artifact mask, the reference whose warp is
trusted most there gives the pixels (:func:`combine_warps`), and the model's redraw of what no warp
covers is guided by the reference that explains the mask best (:func:`pick_guide`). A reference
whose warp does not agree with the image around the mask (a distractor) gets no weight anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .fields import DenseField
from .warp import WarpFill

__all__ = ["ReferenceResult", "CombinedWarp", "combine_warps", "pick_guide", "as_reference_list"]


@dataclass
class ReferenceResult:
    """What one reference gave in a refinement (one per reference, in the order given)."""

    region: np.ndarray | None  # (Hr, Wr) bool: M* on this reference (None when align=False)
    heatmap: np.ndarray | None  # (Hr, Wr) float32 in [0, 1]: its alignment map, for display
    alignment: str | None  # the method that gave its region ("dense", "attention"; None: none ran)
    ring_ncc: float | None  # agreement of its colour-matched warp with the image around the mask (None: no field)
    warp_fraction: float = 0.0  # fraction of the artifact mask drawn from this reference's warp
    notes: list[str] = field(default_factory=list)  # fallbacks for this reference
    info: dict = field(default_factory=dict)  # alignment diagnostics (matches per source, inliers ...)
    field: DenseField | None = None  # dense alignment: this reference's position for every pixel of the zoom-in crop (None: no field)


@dataclass
class CombinedWarp:
    """The references' warps combined over the crop box (full resolution)."""

    patch: np.ndarray  # (N, N, 3) uint8: per pixel, the warp of the reference chosen there
    weight: np.ndarray  # (N, N) float32 in [0, 1]: how much of that warp goes in (0: the model draws)
    use: np.ndarray  # (N, N) bool: the mask pixels some warp is trusted for
    source: np.ndarray  # (N, N) int16: index of the chosen reference per pixel, -1 where none is trusted


def combine_warps(warps: Sequence[WarpFill | None], shape: tuple[int, int], margin: float = 0.05) -> CombinedWarp:
    """Per pixel, the reference whose warp weight is highest (ties: the better ring agreement, then
    the earlier reference); the combined weight is that maximum. Only warps whose ring agreement is
    within ``margin`` of the best one take part: a clearly worse warp (another view, roughly
    aligned) does not fill the pixels a near-exact one leaves out; the model draws those. The best
    one is taken among the warps the misfit rule leaves whole (:func:`~.warp.warp_fill`'s
    ``misfit_factor`` 1) where there are any (one it discounts to 0 trusts no pixel). Warps
    are not averaged: two views differ in detail and an average would blur exactly what a warp is
    there to copy."""
    n, m = shape
    patch = np.zeros((n, m, 3), np.uint8)
    weight = np.zeros((n, m), np.float32)
    source = np.full((n, m), -1, np.int16)
    best_ncc = np.full((n, m), -np.inf, np.float32)
    live = [wf for wf in warps if wf is not None and wf.use.any()]  # (a warp discounted to 0 trusts no pixel)
    # the best agreement among warps whose fit explains their own matches (a discounted one is not
    # near-exact, and does not shut the others out), else among all that take part
    exact = [wf.ncc for wf in live if wf.misfit_factor >= 1.0]
    top = max(exact or [wf.ncc for wf in live], default=-np.inf)
    for i, wf in enumerate(warps):
        if wf is None or not wf.use.any() or wf.ncc < top - margin:
            continue
        better = (wf.weight > weight) | ((wf.weight == weight) & (wf.weight > 0) & (wf.ncc > best_ncc))
        better &= wf.use
        patch[better] = wf.patch[better]
        weight[better] = wf.weight[better]
        source[better] = i
        best_ncc[better] = wf.ncc
    return CombinedWarp(patch=patch, weight=weight, use=source >= 0, source=source)


def pick_guide(warps: Sequence[WarpFill | None], mask_box: np.ndarray, combined: CombinedWarp, matches: Sequence[int] | None = None) -> int:
    """The reference whose tokens guide the model's redraw: the one that gives most of the mask
    through its warp; if none gives any, the one whose warp agrees best with the image around the
    mask (ring correlation); if no reference has a field, the one with the most descriptor matches
    to the image around the mask (``matches``, e.g. the dense alignment's counts: a wrong object
    finds few), else the first."""
    m = np.asarray(mask_box, bool)
    share = [float((combined.source[m] == i).sum()) for i in range(len(warps))]
    if max(share, default=0.0) > 0:
        return int(np.argmax(share))
    ncc = [wf.ncc if wf is not None else -np.inf for wf in warps]
    if ncc and np.isfinite(max(ncc)):
        return int(np.argmax(ncc))
    if matches is not None and len(matches) == len(warps) and max(matches, default=0) > 0:
        return int(np.argmax(matches))
    return 0


def as_reference_list(reference, reference_mask, names: dict | None) -> tuple[list, list, list[dict | None], list[dict]]:
    """Normalise the pipeline's ``reference`` / ``reference_mask`` arguments: one image or a list,
    one mask, None or a list of the same length. ``names`` may give ``reference`` and
    ``reference_mask`` as lists too (file names for messages); returns per-reference name dicts
    and label dicts (how messages call each role: ``reference #1``, ``reference #2 mask``, ...
    where there are several; the plain role names for one reference)."""
    from ..io import InputError

    refs = list(reference) if isinstance(reference, (list, tuple)) else [reference]
    if not refs:
        raise InputError("no reference given: pass at least one reference image")
    if isinstance(reference_mask, (list, tuple)):
        masks = list(reference_mask)
    elif reference_mask is None:
        masks = [None] * len(refs)
    else:
        masks = [reference_mask]
    if len(masks) != len(refs):
        raise InputError(f"{len(masks)} reference mask(s) for {len(refs)} references: give a list with one per reference (None where there is none)")
    per: list[dict | None] = []
    labels: list[dict] = []
    for i in range(len(refs)):
        labels.append({"reference": f"reference #{i + 1}", "reference_mask": f"reference #{i + 1} mask"} if len(refs) > 1 else {})
        if names is None:
            per.append(None)
            continue
        d = dict(names)
        for role in ("reference", "reference_mask"):
            v = names.get(role)
            if isinstance(v, (list, tuple)):
                if i < len(v) and v[i] is not None:
                    d[role] = v[i]
                else:
                    d.pop(role, None)
        per.append(d)
    return refs, masks, per, labels
