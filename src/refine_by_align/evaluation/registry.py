"""The evaluation methods by name: :data:`METHODS` maps the CLI's ``--method`` names to factories
``factory(model=None, **opts) -> Method``; :func:`get_method` resolves a name.

The methods themselves live in ``methods.py`` (the protocol, ``keep``, ``telea``, the classical fills ``harmonic``, ``fsr``, ``mixed``,
the pipeline adapter) and ``baselines.py`` (``keypoint``, ``feature-nn``, ``oracle-align``, built on
``methods.py``); this module is the only one that knows both, so neither imports the other back.
"""

from __future__ import annotations

from typing import Any, Callable

from ..io import InputError
from ..loading import load_pipeline
from .baselines import FeatureNNMethod, KeypointMethod, OracleAlignMethod
from .methods import ClassicalFillMethod, HarmonicMethod, KeepMethod, Method, RefineByAlignMethod, TeleaMethod

__all__ = ["METHODS", "PIPELINE_METHODS", "get_method"]


def _load_pipeline(model: str | None, matcher_weights: Any = None) -> Any:
    """The pipeline a method runs, its own per-step progress bar off (a bench shows one bar over
    the cases; a bar per case under it would bury that one); with ``matcher_weights`` (as
    :meth:`set_matcher` takes them) its ALIKED matcher, or one InputError where they cannot be
    loaded."""
    pipe = load_pipeline(model or "default")
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    if matcher_weights is not None:
        pipe.require_matcher(matcher_weights)
    return pipe


def _plain(cls: type, **fixed: Any) -> Callable[..., Method]:
    """The factory of a method that needs no model."""

    def factory(model: str | None = None, **opts: Any) -> Method:
        return cls(**fixed, **opts)

    return factory


def _on_pipeline(cls: type, **fixed: Any) -> Callable[..., Method]:
    """The factory of a method that runs the pipeline: ``pipeline=`` (already loaded, shared) or
    ``model`` loaded when the method is built."""

    def factory(model: str | None = None, pipeline: Any = None, **opts: Any) -> Method:
        return cls(pipeline if pipeline is not None else _load_pipeline(model), **fixed, **opts)

    return factory


#: ``--method`` name -> ``factory(model=None, **opts) -> Method``. Factories of the methods in
#: :data:`PIPELINE_METHODS` also take ``pipeline=`` (an already loaded pipeline, shared by
#: :func:`~refine_by_align.evaluation.report.run_all`) instead of loading ``model``.
METHODS: dict[str, Callable[..., Method]] = {
    "keep": _plain(KeepMethod),
    "telea": _plain(TeleaMethod),
    "harmonic": _plain(HarmonicMethod),
    "fsr": _plain(ClassicalFillMethod, fill="fsr"),
    "mixed": _plain(ClassicalFillMethod, fill="mixed"),
    "mixed-local": _plain(ClassicalFillMethod, fill="mixed-local"),
    "keypoint": _plain(KeypointMethod),
    "feature-nn": _on_pipeline(FeatureNNMethod),
    "oracle-align": _on_pipeline(OracleAlignMethod),
    "single-stage": _on_pipeline(RefineByAlignMethod, align=False),
    "refine-by-align": _on_pipeline(RefineByAlignMethod, align=True),
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
