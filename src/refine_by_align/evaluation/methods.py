"""Methods the benchmark can run: baselines and an adapter around the Refine-by-Align pipeline.

A method is any object with a ``name`` and ``__call__(case) -> MethodOutput``. :data:`METHODS` maps
the CLI's ``--method`` names to factories ``factory(model=None, **opts) -> Method``; use
:func:`get_method` to resolve a name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import cv2
import numpy as np
from PIL import Image

from ..io import InputError, to_rgb
from ..loading import load_pipeline
from .cases import Case

__all__ = [
    "MethodOutput",
    "Method",
    "KeepMethod",
    "TeleaMethod",
    "RefineByAlignMethod",
    "keep",
    "telea",
    "METHODS",
    "PIPELINE_METHODS",
    "get_method",
]


@dataclass
class MethodOutput:
    """What a method returns for one case.

    ``image``: RGB, same size as the case's input image. ``correspondence``: bool (Hr, Wr) predicted
    region on the reference, or None for methods that do not align. ``correspondence_map``: optional
    float (Hr, Wr) soft map in [0, 1]. ``timings``: optional per-stage seconds. ``fallback``: True
    when the method could not do what it is named for on this case and fell back to something else
    (recorded in the benchmark's case record). ``info``: free-form diagnostics (not scored).
    """

    image: Image.Image
    correspondence: np.ndarray | None = None
    correspondence_map: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    fallback: bool = False
    info: dict[str, Any] = field(default_factory=dict)


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


class RefineByAlignMethod:
    """Adapter: runs a Refine-by-Align pipeline on a case.

    The pipeline is called as ``pipeline(image, mask, reference, reference_mask=..., align=...,
    **call_kwargs)`` and must return an object with ``.image`` (PIL) and optionally
    ``.correspondence_mask``, ``.correspondence_map`` and ``.timings``.
    ``align=False`` gives the single-stage variant (refinement without the alignment stage).
    """

    def __init__(self, pipeline: Any, align: bool = True, name: str | None = None, **call_kwargs: Any):
        self.pipeline = pipeline
        self.align = bool(align)
        self.name = name or ("refine-by-align" if self.align else "single-stage")
        self.call_kwargs = call_kwargs

    def __call__(self, case: Case) -> MethodOutput:
        out = self.pipeline(
            case.image,
            case.mask,
            case.reference,
            reference_mask=case.reference_mask,
            align=self.align,
            **self.call_kwargs,
        )
        image = to_rgb(out.image)
        if image.size != case.image.size:
            raise RuntimeError(
                f"{self.name}: output size {image.width}x{image.height} differs from the input "
                f"{case.image.width}x{case.image.height} on case '{case.id}'"
            )
        corr = getattr(out, "correspondence_mask", None)
        corr = None if corr is None else np.asarray(corr).astype(bool)
        cmap = getattr(out, "correspondence_map", None)
        cmap = None if cmap is None else np.asarray(cmap, dtype=np.float32)
        timings = dict(getattr(out, "timings", None) or {})
        return MethodOutput(image=image, correspondence=corr, correspondence_map=cmap, timings=timings)


keep = KeepMethod()
telea = TeleaMethod()


def _keep_factory(model: str | None = None, **opts: Any) -> Method:
    return KeepMethod(**opts)


def _telea_factory(model: str | None = None, **opts: Any) -> Method:
    return TeleaMethod(**opts)


def _load_pipeline(model: str | None) -> Any:
    return load_pipeline(model or "default")


def _refine_factory(model: str | None = None, pipeline: Any = None, **opts: Any) -> Method:
    return RefineByAlignMethod(pipeline if pipeline is not None else _load_pipeline(model), align=True, **opts)


def _single_stage_factory(model: str | None = None, pipeline: Any = None, **opts: Any) -> Method:
    return RefineByAlignMethod(pipeline if pipeline is not None else _load_pipeline(model), align=False, **opts)


def _keypoint_factory(model: str | None = None, **opts: Any) -> Method:
    from .baselines import KeypointMethod

    return KeypointMethod(**opts)


def _feature_nn_factory(model: str | None = None, pipeline: Any = None, **opts: Any) -> Method:
    from .baselines import FeatureNNMethod

    return FeatureNNMethod(pipeline if pipeline is not None else _load_pipeline(model), **opts)


def _oracle_factory(model: str | None = None, pipeline: Any = None, **opts: Any) -> Method:
    from .baselines import OracleAlignMethod

    return OracleAlignMethod(pipeline if pipeline is not None else _load_pipeline(model), **opts)


#: ``--method`` name -> ``factory(model=None, **opts) -> Method``. Factories of the methods in
#: :data:`PIPELINE_METHODS` also take ``pipeline=`` (an already loaded pipeline, shared by
#: :func:`~refine_by_align.evaluation.report.run_all`) instead of loading ``model``.
METHODS: dict[str, Callable[..., Method]] = {
    "keep": _keep_factory,
    "telea": _telea_factory,
    "keypoint": _keypoint_factory,
    "feature-nn": _feature_nn_factory,
    "oracle-align": _oracle_factory,
    "single-stage": _single_stage_factory,
    "refine-by-align": _refine_factory,
}

#: The registered methods that run the Refine-by-Align pipeline (and so need a model).
PIPELINE_METHODS = frozenset({"refine-by-align", "single-stage", "feature-nn", "oracle-align"})


def get_method(name: str, model: str | None = None, **opts: Any) -> Method:
    """Build the method registered as ``name``; :class:`InputError` listing the choices if unknown."""
    try:
        factory = METHODS[name]
    except KeyError:
        raise InputError(f"unknown method '{name}' (choose from: {', '.join(METHODS)})") from None
    return factory(model, **opts)
