"""Dense correspondence: for each pixel around the artifact, its position on the reference.

The paper's alignment (Algorithm 1) gives a region M* on a 16 x 16 token grid; its stated limit
(Sec. 5: "the accuracy of our alignment method is limited by the number of vision tokens") is what
this module lifts. Point matches between the image *outside* the artifact mask and the reference
object come from one or more sources, each returning :class:`Matches`:

* ``sift``: OpenCV SIFT keypoints with Lowe's ratio test (few, very precise on rigid views);
* ``aliked``: the pretrained ALIKED matcher (``models/aliked.py``; many, robust under deformation);
* ``attention``: the model's own cross-attention at Algorithm 1's layer, read at sub-token
  precision (a soft-argmax around each query's peak token; :func:`attention_matches`).

:func:`fit_field` fits a robust model to them: a global homography by RANSAC (MAGSAC), then a smooth
thin-plate-spline residual where the matches support one (its smoothing chosen by
cross-validation, "homography only" among the choices); :func:`refine_field_ecc` (a homography
on a ring around the mask, by ECC) and :func:`refine_field_flow` (optical flow around the mask,
carried into it) refine it photometrically. :class:`DenseField` is the result sampled
on the zoom-in crop, with a confidence per pixel; :meth:`DenseField.push_mask` gives M* as the
artifact mask pushed through the field (pixel-accurate), and :func:`warp_fill` the reference warped
into the crop, colour-matched to the image around the mask, with the ring agreement that gates it.

The toolkit lives in four modules, one step each, imported in this order (each uses only the ones
before it); this module gathers their public names:

* :mod:`.matching`: the point matches (SIFT, ALIKED, attention, the template search);
* :mod:`.fields`: the field fitted to them (:func:`fit_field`, :class:`DenseField`);
* :mod:`.warp`: the reference warped through a field, colour-matched and trusted (:func:`warp_fill`);
* :mod:`.field_refinement`: ECC and optical flow around the mask (:func:`refine_field_flow`).
"""

from __future__ import annotations

from ..threads import worker_threads
from . import field_refinement, fields, matching, warp
from .field_refinement import *  # noqa: F403 (each module's __all__: the names gathered here)
from .fields import *  # noqa: F403
from .matching import *  # noqa: F403
from .warp import *  # noqa: F403

__all__ = ["worker_threads", *matching.__all__, *fields.__all__, *warp.__all__, *field_refinement.__all__]
