"""Loading evaluation cases from a case folder.

Layout: ``CASES_DIR/<case_id>/`` holding

* ``image.png``      image with artifacts (required)
* ``mask.png``       artifact mask, bright = artifact (required)
* ``reference.png``  reference image of the same object (required)
* ``reference_mask.png``  object mask on the reference (optional; else the reference's alpha)
* ``correspondence.png``  the true region M* on the reference matching the artifact (optional; ``Case.region``)
* ``target.png``     artifact-free ground truth (optional)
* ``true_field.npz`` the true reference position of the image's pixels around the artifact
  (optional; ``Case.true_field``, :class:`TrueField`): arrays ``origin`` (x0, y0) and ``xy``
  (h, w, 2) float32, NaN where the truth leaves the reference (make-cases' affine / nonrigid cases)
* ``meta.json``      any fields; ``kind`` groups the benchmark summary (default ``"default"``)
* ``reference_2.png`` (+ ``reference_mask_2.png``), ``reference_3.png``, ...: more references
  (optional; ``meta["reference_order"]`` lists the 1-based numbers in the order to pass them,
  ``reference.png`` being number 1)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io import InputError, alpha_mask, load_image, load_mask, to_rgb, validate_inputs

__all__ = ["Case", "TrueField", "load_cases", "load_case", "list_case_dirs", "check_case_dir", "DEFAULT_KIND", "REQUIRED_FILES"]

DEFAULT_KIND = "default"
REQUIRED_FILES = ("image.png", "mask.png", "reference.png")
OPTIONAL_IMAGES = ("reference_mask.png", "correspondence.png", "target.png")


@dataclass
class TrueField:
    """The true correspondence of the image's pixels around the artifact (``true_field.npz``):
    where each lands on the reference. Scored by :func:`~.metrics.field_error`."""

    origin: tuple[int, int]  # (x0, y0): the image pixel of xy[0, 0]
    xy: np.ndarray  # (h, w, 2) float32: (x, y) on the reference; NaN where the truth leaves it

    @classmethod
    def load(cls, path: str | os.PathLike, image_size: tuple[int, int], what: str) -> "TrueField":
        """Read ``path`` (arrays only: no pickled objects are loaded); ``image_size`` (W, H) the
        case's image, which the covered box must lie in. Raises :class:`InputError` naming
        ``what`` on a malformed file."""
        try:
            with np.load(path, allow_pickle=False) as z:
                origin, xy = np.asarray(z["origin"]), np.asarray(z["xy"], dtype=np.float32)
        except KeyError as e:
            raise InputError(f"{what} '{path}': not a true-field file (an npz with arrays 'origin' and 'xy'; {e.args[0]})") from None
        except (OSError, ValueError):  # (NumPy reads a file that is not an npz of arrays as a pickle, which is refused)
            raise InputError(f"{what} '{path}': not a true-field file (an npz of plain arrays 'origin' and 'xy'; pickled objects are not loaded)") from None
        w, h = image_size
        if origin.shape != (2,) or xy.ndim != 3 or xy.shape[2] != 2:
            raise InputError(f"{what} '{path}': expected origin (2,) and xy (h, w, 2), got {origin.shape} and {xy.shape}")
        x0, y0 = int(origin[0]), int(origin[1])
        if x0 < 0 or y0 < 0 or x0 + xy.shape[1] > w or y0 + xy.shape[0] > h:
            raise InputError(f"{what} '{path}': its box at ({x0}, {y0}), {xy.shape[1]}x{xy.shape[0]}, leaves the {w}x{h} image")
        return cls((x0, y0), xy)


@dataclass
class Case:
    """One evaluation case, fully loaded."""

    id: str
    dir: Path
    image: Image.Image  # RGB
    mask: np.ndarray  # bool (H, W), True = artifact
    reference: Image.Image  # RGB
    reference_mask: np.ndarray | None = None  # bool (Hr, Wr)
    region: np.ndarray | None = None  # bool (Hr, Wr): the true region M* on the reference (correspondence.png)
    target: Image.Image | None = None  # RGB, same size as image
    true_field: TrueField | None = None  # where the image's pixels around the artifact truly land on the reference
    meta: dict[str, Any] = field(default_factory=dict)
    extra_references: list[tuple[Image.Image, np.ndarray | None]] = field(default_factory=list)  # reference_2.png, ... with their masks

    @property
    def correspondence(self) -> np.ndarray | None:
        """Deprecated name of :attr:`region` (goes in the next release)."""
        import warnings

        warnings.warn("Case.correspondence is deprecated, use .region", DeprecationWarning, stacklevel=2)
        return self.region

    def references(self, which: str | int = "all") -> tuple[list[Image.Image], list[np.ndarray | None]]:
        """The references to pass and their masks: ``"all"`` (in ``meta["reference_order"]``, else
        in file order) or one of them alone by its 1-based number (1 = ``reference.png``)."""
        refs = [(self.reference, self.reference_mask)] + list(self.extra_references)
        if which == "all":
            order = self.meta.get("reference_order") or list(range(1, len(refs) + 1))
            if sorted(order) != list(range(1, len(refs) + 1)):
                raise InputError(f"case '{self.id}': reference_order {order} does not list references 1..{len(refs)}")
            chosen = [refs[i - 1] for i in order]
        else:
            n = int(which)
            if not 1 <= n <= len(refs):
                raise InputError(f"case '{self.id}': has {len(refs)} reference(s), no reference {n}")
            chosen = [refs[n - 1]]
        return [r for r, _ in chosen], [m for _, m in chosen]

    @property
    def kind(self) -> str:
        """The summary group of this case: ``meta["kind"]`` or ``"default"``."""
        k = self.meta.get("kind", DEFAULT_KIND)
        return DEFAULT_KIND if k is None or k == "" else str(k)


def _size_check(arr_hw: tuple[int, int], want_wh: tuple[int, int], path: Path, against: str) -> None:
    h, w = arr_hw
    if (w, h) != tuple(want_wh):
        raise InputError(
            f"{path}: size {w}x{h} does not match the {against} {want_wh[0]}x{want_wh[1]}"
        )


def check_case_dir(case_dir: str | os.PathLike) -> None:
    """Cheap up-front check of a case folder: required files exist and every image file present has
    a readable header (no pixel decoding). Raises :class:`InputError` naming the case and file."""
    d = Path(case_dir)
    cid = d.name
    for name in REQUIRED_FILES:
        if not (d / name).is_file():
            raise InputError(f"case '{cid}' ({d}): required file '{name}' is missing")
    for name in REQUIRED_FILES + OPTIONAL_IMAGES:
        path = d / name
        if not path.exists():
            continue
        try:
            with Image.open(path):
                pass
        except (OSError, SyntaxError, ValueError):
            raise InputError(f"case '{cid}' '{path}': not a readable image (unknown or corrupt format)") from None


def load_case(case_dir: str | os.PathLike) -> Case:
    """Load one case folder; raises :class:`InputError` naming the folder and file on any problem."""
    d = Path(case_dir)
    cid = d.name
    for name in REQUIRED_FILES:
        if not (d / name).is_file():
            raise InputError(f"case '{cid}' ({d}): required file '{name}' is missing")

    def what(role: str) -> str:
        return f"case '{cid}' {role}"

    image = to_rgb(load_image(d / "image.png", what("image")))
    mask = load_mask(d / "mask.png", what("mask"))
    ref_raw = load_image(d / "reference.png", what("reference"))
    reference = to_rgb(ref_raw)

    ref_mask_path = d / "reference_mask.png"
    if ref_mask_path.exists():
        reference_mask = load_mask(ref_mask_path, what("reference_mask"))
    else:
        reference_mask = alpha_mask(ref_raw)

    names = {
        "image": str(d / "image.png"),
        "mask": str(d / "mask.png"),
        "reference": str(d / "reference.png"),
        "reference_mask": str(ref_mask_path) if ref_mask_path.exists() else f"{d / 'reference.png'} (alpha)",
    }
    try:
        validate_inputs(image, mask, reference, reference_mask, names=names)
    except InputError as e:
        raise InputError(f"case '{cid}': {e}") from None

    region = None
    corr_path = d / "correspondence.png"  # (the file keeps its name: a data format)
    if corr_path.exists():
        region = load_mask(corr_path, what("correspondence"))
        _size_check(region.shape, reference.size, corr_path, "reference")

    target = None
    target_path = d / "target.png"
    if target_path.exists():
        target = to_rgb(load_image(target_path, what("target")))
        _size_check((target.height, target.width), image.size, target_path, "image")

    true_field = None
    field_path = d / "true_field.npz"
    if field_path.exists():
        true_field = TrueField.load(field_path, image.size, what("true field"))

    meta: dict[str, Any] = {}
    meta_path = d / "meta.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"case '{cid}' meta '{meta_path}': not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise InputError(f"case '{cid}' meta '{meta_path}': must hold a JSON object, got {type(meta).__name__}")

    extras = []
    n = 2
    while (d / f"reference_{n}.png").exists():
        ref_n = load_image(d / f"reference_{n}.png", what(f"reference_{n}"))
        mask_path = d / f"reference_mask_{n}.png"
        mask_n = load_mask(mask_path, what(f"reference_mask_{n}")) if mask_path.exists() else alpha_mask(ref_n)
        try:
            validate_inputs(image, mask, to_rgb(ref_n), mask_n, names={"reference": str(d / f"reference_{n}.png"), "reference_mask": str(mask_path)})
        except InputError as e:
            raise InputError(f"case '{cid}': {e}") from None
        extras.append((to_rgb(ref_n), mask_n))
        n += 1

    return Case(
        id=cid,
        dir=d,
        image=image,
        mask=mask,
        reference=reference,
        reference_mask=reference_mask,
        region=region,
        target=target,
        true_field=true_field,
        meta=meta,
        extra_references=extras,
    )


def list_case_dirs(cases_dir: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """The case folders under ``cases_dir`` (sub-folders, hidden ones skipped), sorted by id, the
    first ``limit`` of them if given. Raises :class:`InputError` when there are none."""
    root = Path(cases_dir)
    if not root.exists():
        raise InputError(f"cases folder '{root}': not found")
    if not root.is_dir():
        raise InputError(f"cases folder '{root}': is not a folder")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not dirs:
        raise InputError(f"cases folder '{root}': holds no case folders (expected <case_id>/image.png, ...)")
    return dirs if limit is None else dirs[:limit]


def load_cases(cases_dir: str | os.PathLike, limit: int | None = None) -> list[Case]:
    """Load every case folder under ``cases_dir`` (see :func:`list_case_dirs`), sorted by id.

    ``limit`` keeps only the first ``limit`` cases (in id order). Raises :class:`InputError` when the
    folder is missing or holds no cases, and for any missing or unreadable file of a case.
    """
    return [load_case(p) for p in list_case_dirs(cases_dir, limit)]
