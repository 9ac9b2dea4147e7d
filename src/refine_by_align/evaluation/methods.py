"""Methods the benchmark can run: baselines and an adapter around the Refine-by-Align pipeline.

A method is any object with a ``name`` and ``__call__(case) -> MethodOutput``. The CLI's
``--method`` names are resolved by :mod:`.registry` (``METHODS``, ``get_method``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
from PIL import Image

from ..io import to_rgb
from ..zoom import Box
from .cases import Case

__all__ = [
    "MethodOutput",
    "ImageField",
    "Method",
    "KeepMethod",
    "TeleaMethod",
    "ClassicalFillMethod",
    "HarmonicMethod",
    "RefineByAlignMethod",
    "keep",
    "telea",
]


@dataclass
class ImageField:
    """A per-pixel correspondence over a box of the image (a :class:`MethodOutput`'s ``field``;
    the pipeline's own is its :class:`~refine_by_align.pipelines.fields.DenseField`)."""

    box: Box  # the image pixels covered
    xy: np.ndarray  # (h, w, 2) float32: each one's (x, y) on the reference


@dataclass
class MethodOutput:
    """What a method returns for one case.

    ``image``: RGB, same size as the case's input image. ``region``: bool (Hr, Wr) predicted M* (the
    aligned region on the reference), or None for methods that do not align. ``heatmap``: optional
    float (Hr, Wr) soft map in [0, 1]. ``timings``: optional per-stage seconds. ``fallback``: True
    when the method could not do what it is named for on this case and fell back to something else
    (recorded in the benchmark's case record). ``info``: free-form diagnostics (not scored).
    ``field``: for methods that find a per-pixel correspondence, any object with ``box`` (a
    :class:`~refine_by_align.zoom.Box` on the image) and ``xy`` ((h, w, 2): each of its pixels'
    (x, y) on ``reference.png``), scored against the case's true field where it has one. The old
    names ``correspondence`` and ``correspondence_map`` still read (deprecated: they go in the next release).
    """

    image: Image.Image
    region: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    fallback: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    field: Any = None

    def _old(self, old: str, new: str):
        warnings.warn(f"MethodOutput.{old} is deprecated, use .{new}", DeprecationWarning, stacklevel=3)
        return getattr(self, new)

    correspondence = property(lambda self: self._old("correspondence", "region"), doc="Deprecated name of :attr:`region`.")
    correspondence_map = property(lambda self: self._old("correspondence_map", "heatmap"), doc="Deprecated name of :attr:`heatmap`.")


@runtime_checkable
class Method(Protocol):
    """A refinement method under evaluation."""

    name: str

    def __call__(self, case: Case) -> MethodOutput: ...


class KeepMethod:
    """Baseline that returns the input unchanged (the 'do nothing' score)."""

    name = "keep"

    def __call__(self, case: Case) -> MethodOutput:
        return MethodOutput(image=case.image.copy())


class TeleaMethod:
    """Baseline: OpenCV Telea inpainting inside the mask; pixels outside the mask are unchanged."""

    def __init__(self, radius: float = 5.0, name: str = "telea"):
        self.radius = float(radius)
        self.name = name

    def __call__(self, case: Case) -> MethodOutput:
        rgb = np.asarray(case.image.convert("RGB"), dtype=np.uint8)
        m = np.asarray(case.mask, dtype=bool)
        inpainted = cv2.inpaint(np.ascontiguousarray(rgb), m.astype(np.uint8) * 255, self.radius, cv2.INPAINT_TELEA)
        out = rgb.copy()
        out[m] = inpainted[m]
        return MethodOutput(image=Image.fromarray(out, "RGB"))


class ClassicalFillMethod:
    """Baseline: a classical fill inside the mask, from the pixels around it alone (no model, no
    reference; fill.py): ``harmonic`` (Laplace's equation, :func:`~refine_by_align.fill.harmonic_fill`:
    the shipped model's prefill), ``biharmonic``, ``fsr`` (frequency-selective reconstruction,
    :func:`~refine_by_align.fill.fsr_fill`) or ``mixed`` (FSR and biharmonic weighed by their errors
    on a ring of known pixels, :func:`~refine_by_align.fill.mixed_fill`: the full-resolution fill the
    shipped model's correction goes on). Pixels outside the mask are unchanged. The bar a
    reference-guided redraw must clear where no warp is trusted."""

    def __init__(self, fill: str = "harmonic"):
        from ..fill import CLASSICAL_FILLS

        if fill not in CLASSICAL_FILLS or fill == "telea":
            raise ValueError(f"unknown classical fill baseline '{fill}' (choose harmonic, biharmonic, fsr, mixed or mixed-local; telea is TeleaMethod)")
        self.fill = self.name = fill

    def __call__(self, case: Case) -> MethodOutput:
        from ..fill import classical_fill

        rgb = np.asarray(case.image.convert("RGB"), dtype=np.uint8)
        return MethodOutput(image=Image.fromarray(classical_fill(rgb, np.asarray(case.mask, dtype=bool), self.fill), "RGB"))


class HarmonicMethod(ClassicalFillMethod):
    """Baseline: the harmonic fill inside the mask (:class:`ClassicalFillMethod` ``harmonic``)."""

    def __init__(self):
        super().__init__("harmonic")


class RefineByAlignMethod:
    """Adapter: runs a Refine-by-Align pipeline on a case.

    The pipeline is called as ``pipeline(image, mask, reference, reference_mask=..., align=...,
    **call_kwargs)`` and must return an object with ``.image`` (PIL) and optionally
    ``.region``, ``.heatmap`` and ``.timings``.
    ``align=False`` gives the single-stage variant (refinement without the alignment stage).
    """

    def __init__(
        self, pipeline: Any, align: bool = True, name: str | None = None, references: str | int = "all", reference_masks: bool = True, **call_kwargs: Any
    ):
        self.pipeline = pipeline
        self.align = bool(align)
        self.name = name or ("refine-by-align" if self.align else "single-stage")
        self.references = references  # a case with several references: "all" of them, or one alone by its number
        self.reference_masks = bool(reference_masks)  # False: the cases' reference masks are not given (estimated, as for a user who has none)
        self.call_kwargs = call_kwargs

    def __call__(self, case: Case) -> MethodOutput:
        refs, masks = case.references(self.references)
        if not self.reference_masks:
            masks = [None] * len(refs)
        several = len(refs) > 1
        out = self.pipeline(
            case.image,
            case.mask,
            refs if several else refs[0],
            reference_mask=masks if several else masks[0],
            align=self.align,
            **self.call_kwargs,
        )
        image = to_rgb(out.image)
        if image.size != case.image.size:
            raise RuntimeError(
                f"{self.name}: output size {image.width}x{image.height} differs from the input "
                f"{case.image.width}x{case.image.height} on case '{case.id}'"
            )
        region = getattr(out, "region", None)
        heat = getattr(out, "heatmap", None)
        info: dict[str, Any] = {}
        listed = getattr(out, "references", None) or []
        fld = listed[0].field if len(listed) == 1 else None
        if several:  # score the region found on reference.png (number 1), whichever reference guided
            first = next(i for i, r in enumerate(refs) if r is case.reference)  # where reference.png went in the order
            r1 = out.references[first]
            region, heat, fld = r1.region, r1.heatmap, r1.field
            info = {"guide": int(out.guide), "warp_share": [round(float(r.warp_fraction), 4) for r in out.references]}
        if self.references not in ("all", 1):  # a region or field on another reference than reference.png: not scored
            region = heat = fld = None
        region = None if region is None else np.asarray(region).astype(bool)
        heat = None if heat is None else np.asarray(heat, dtype=np.float32)
        timings = dict(getattr(out, "timings", None) or {})
        return MethodOutput(image=image, region=region, heatmap=heat, timings=timings, info=info, field=fld)


keep = KeepMethod()
telea = TeleaMethod()
