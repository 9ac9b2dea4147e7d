"""Benchmark builder: turn a multi-view photo folder into evaluation case folders.

Each case simulates a generated image with a perceptual artifact inside the object (App. A.2: small,
irregular; App. A.11: "artifacts are always generated within the object, and the original layout
and background are always preserved") together with a reference of the same object:

* ``affine``: the reference is the same photo's object under an affine transform and a colour
  perturbation (``S(T(I_o x M_o))``, Sec. 3.4), so the true correspondence is known;
* ``nonrigid``: the same with a perspective distortion plus a smooth non-rigid warp (known
  correspondence);
* ``multiview``: the reference is another photo of the subject (as MVObj pairs); correspondence
  unknown, no ``correspondence.png``.

Case folder (all images at the photo's size, 512 px on the longest side for the shared data)::

    CASE/image.png             the photo with a simulated artifact inside the object
    CASE/mask.png              artifact mask, 255 = artifact
    CASE/reference.png         the reference (black outside the object for affine / nonrigid)
    CASE/reference_mask.png    object mask of the reference, 255 = object
    CASE/correspondence.png    true artifact region on the reference (affine / nonrigid only)
    CASE/true_field.npz        (affine / nonrigid only) where each image pixel around the artifact
                               truly lands on the reference: ``origin`` (x0, y0), ``xy`` (h, w, 2)
                               float32, NaN where it leaves the reference (:func:`true_field`)
    CASE/target.png            the artifact-free photo
    CASE/meta.json             kind, artifact, subject, views, seed, transform, ...
    CASE/reference_2.png       (with ``extra_references``) more references: another view, a
    CASE/reference_mask_2.png  partial view or a distractor; meta.json says which is which

Artifact simulators are pluggable: :data:`ARTIFACTS` maps a name to
``fn(image (H, W, 3) uint8, mask (H, W) bool, rng) -> (H, W, 3) uint8``; the builder composites the
result inside the mask only, so pixels outside the mask stay bit-identical to the target.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from refine_by_align.data.masks import MaskConfig, erode, random_artifact_mask
from refine_by_align.data.perturb import (
    ColorConfig,
    GeomConfig,
    apply_color,
    random_transform,
    sample_color,
    warp_image,
    warp_mask,
)
from refine_by_align.data.readers import (
    VALIDATION_SUBJECTS,
    DatasetError,
    MultiViewFolder,
)
from refine_by_align.io import _umask, save_image_atomic
from refine_by_align.zoom import Box, mask_bbox

__all__ = ["ARTIFACTS", "EXTRA_ROLES", "KINDS", "CaseConfig", "detail_center", "make_cases", "register_artifact", "simulate_artifact", "true_field", "TRUE_FIELD_MARGIN"]

KINDS = ("affine", "nonrigid", "multiview")

ArtifactFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
ARTIFACTS: dict[str, ArtifactFn] = {}


def register_artifact(name: str) -> Callable[[ArtifactFn], ArtifactFn]:
    """Decorator: add an artifact simulator ``fn(image, mask, rng) -> image`` to :data:`ARTIFACTS`."""

    def deco(fn: ArtifactFn) -> ArtifactFn:
        ARTIFACTS[name] = fn
        return fn

    return deco


def _region(mask: np.ndarray, pad: int) -> Box:
    b = mask_bbox(mask)
    h, w = mask.shape
    return Box(max(b.x0 - pad, 0), max(b.y0 - pad, 0), min(b.x1 + pad, w), min(b.y1 + pad, h))


def _side(mask: np.ndarray) -> int:
    b = mask_bbox(mask)
    return max(b.width, b.height)


@register_artifact("smear")
def smear(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Directional (motion) blur along a random angle, length ~ 0.6-1.2 x the mask size."""
    length = int(np.clip(rng.uniform(0.6, 1.2) * _side(mask), 7, 81)) | 1
    k = np.zeros((length, length), np.float32)
    th = rng.uniform(0, np.pi)
    c = length // 2
    dx, dy = np.cos(th) * c, np.sin(th) * c
    cv2.line(k, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1)
    k /= k.sum()
    b = _region(mask, length)
    out = image.copy()
    out[b.y0 : b.y1, b.x0 : b.x1] = cv2.filter2D(image[b.y0 : b.y1, b.x0 : b.x1], -1, k, borderType=cv2.BORDER_REFLECT)
    return out


@register_artifact("wrong_texture")
def wrong_texture(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Content that does not belong there: a (flipped / rotated) patch from elsewhere in the image,
    or, with probability 0.35, a smoothed colour-noise texture around the local mean colour."""
    h, w = mask.shape
    b = mask_bbox(mask)
    out = image.copy()
    if rng.random() < 0.65 and b.width < w // 2 and b.height < h // 2:
        for _ in range(20):  # a source patch that does not overlap the artifact box
            x = int(rng.integers(0, w - b.width + 1))
            y = int(rng.integers(0, h - b.height + 1))
            if abs(x - b.x0) >= b.width or abs(y - b.y0) >= b.height:
                break
        patch = image[y : y + b.height, x : x + b.width]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch[::-1]
        out[b.y0 : b.y1, b.x0 : b.x1] = patch
        return out
    mean = image[mask].astype(np.float32).mean(axis=0)
    g = int(rng.integers(3, 9))
    noise = cv2.resize(rng.standard_normal((g, g, 3)).astype(np.float32), (b.width, b.height), interpolation=cv2.INTER_CUBIC)
    tex = mean + noise * rng.uniform(30, 70)
    out[b.y0 : b.y1, b.x0 : b.x1] = np.clip(tex, 0, 255).astype(np.uint8)
    return out


@register_artifact("local_warp")
def local_warp(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A swirl plus a random low-frequency displacement around the mask: distorted structure."""
    side = _side(mask)
    b = _region(mask, max(4, side // 2))
    hh, ww = b.height, b.width
    ys, xs = np.mgrid[0:hh, 0:ww].astype(np.float32)
    cx, cy = ww / 2.0, hh / 2.0
    r = np.hypot(xs - cx, ys - cy)
    rad = max(side * 0.75, 4.0)
    ang = rng.choice([-1, 1]) * rng.uniform(1.5, 3.5) * np.clip(1 - r / rad, 0, 1) ** 2
    mx = cx + (xs - cx) * np.cos(ang) - (ys - cy) * np.sin(ang)
    my = cy + (xs - cx) * np.sin(ang) + (ys - cy) * np.cos(ang)
    disp = cv2.resize(rng.uniform(-1, 1, (4, 4, 2)).astype(np.float32), (ww, hh), interpolation=cv2.INTER_CUBIC)
    mx = (mx + disp[..., 0] * 0.3 * side).astype(np.float32)
    my = (my + disp[..., 1] * 0.3 * side).astype(np.float32)
    out = image.copy()
    out[b.y0 : b.y1, b.x0 : b.x1] = cv2.remap(image[b.y0 : b.y1, b.x0 : b.x1], mx, my, cv2.INTER_LINEAR,
                                              borderMode=cv2.BORDER_REFLECT)
    return out


@register_artifact("detail_loss")
def detail_loss(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strong blur plus colour flattening (towards the region's mean colour, fewer levels)."""
    side = _side(mask)
    sigma = max(3.0, rng.uniform(0.12, 0.25) * side)
    b = _region(mask, int(3 * sigma))
    sub = image[b.y0 : b.y1, b.x0 : b.x1].astype(np.float32)
    blur = cv2.GaussianBlur(sub, (0, 0), sigma)
    mean = image[mask].astype(np.float32).mean(axis=0)
    flat = mean + (blur - mean) * rng.uniform(0.2, 0.5)
    step = rng.uniform(12, 28)
    flat = np.round(flat / step) * step
    out = image.copy()
    out[b.y0 : b.y1, b.x0 : b.x1] = np.clip(flat, 0, 255).astype(np.uint8)
    return out


def simulate_artifact(
    image: np.ndarray, mask: np.ndarray, name: str, rng: np.random.Generator, feather: float = 2.0
) -> np.ndarray:
    """Apply artifact ``name`` and composite it inside ``mask`` only (alpha ramps up over
    ``feather`` px inside the mask border); pixels outside the mask are bit-identical."""
    if name not in ARTIFACTS:
        raise ValueError(f"unknown artifact {name!r}; registered: {sorted(ARTIFACTS)}")
    art = ARTIFACTS[name](image, mask, rng)
    if art.shape != image.shape:
        raise ValueError(f"artifact {name!r} changed the image shape {image.shape} -> {art.shape}")
    m = mask.astype(np.uint8)
    dist = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    alpha = np.clip(dist / max(feather, 1e-6), 0.0, 1.0)[..., None] if feather > 0 else m[..., None].astype(np.float32)
    blended = np.rint(image.astype(np.float32) * (1 - alpha) + art.astype(np.float32) * alpha).astype(np.uint8)
    return np.where(mask[..., None], blended, image)


def detail_center(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, inset: int = 8,
                  top: float = 0.2) -> tuple[float, float]:
    """A random (x, y) among the most detailed object pixels: the top ``top`` fraction by local
    gradient energy (Sobel magnitude, box-averaged), inside the object eroded by ``inset`` px."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    k = max(3, (min(mask.shape) // 32) | 1)
    energy = cv2.boxFilter(np.hypot(gx, gy), -1, (k, k))
    core = erode(mask, inset)
    if not core.any():
        core = mask
    ys, xs = np.nonzero(core)
    e = energy[ys, xs]
    thr = np.quantile(e, 1.0 - top)
    sel = np.nonzero(e >= thr)[0]
    j = int(sel[int(rng.integers(len(sel)))])
    return float(xs[j]), float(ys[j])


class CaseConfig:
    """Defaults of the benchmark builder (plain attributes; change them on an instance)."""

    def __init__(self) -> None:
        # artifact masks: 0.3% .. 3% of the image, log-uniform (small, as App. A.2 reports)
        self.mask = MaskConfig(area_min=0.003, area_max=0.03, max_object_fraction=0.25, min_pixels=40)
        # "affine" kind: moderate view change, the object stays inside the canvas
        self.affine = GeomConfig(rotation_deg=20.0, scale=(0.75, 1.0), aspect=(0.92, 1.08), shear_deg=6.0,
                                 translate=0.05, p_flip=0.5, perspective=0.0, p_nonrigid=0.0)
        # "nonrigid" kind: perspective + smooth non-rigid warp
        self.nonrigid = GeomConfig(rotation_deg=15.0, scale=(0.75, 1.0), aspect=(0.92, 1.08), shear_deg=4.0,
                                   translate=0.05, p_flip=0.3, perspective=0.08, p_nonrigid=1.0,
                                   nonrigid_amplitude=0.025, nonrigid_grid=4)
        self.color = ColorConfig()  # colour perturbation of the affine / nonrigid references
        self.detail_top = 0.2  # artifacts are centred among the top 20% most detailed object pixels
        self.max_side = 512  # photos are downscaled to this longest side (the shared data already is)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    save_image_atomic(Image.fromarray((mask.astype(np.uint8) * 255), "L"), path)


def _save_rgb(image: np.ndarray, path: Path) -> None:
    save_image_atomic(Image.fromarray(image, "RGB"), path)


#: Roles of the extra references :func:`make_cases` can add to a case (``extra_references``).
EXTRA_ROLES = ("view", "partial", "distractor")


def make_cases(
    source_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    seed: int = 0,
    subjects: list[str] | tuple[str, ...] | None = None,
    cases_per_subject: int = 3,
    artifacts: list[str] | tuple[str, ...] | None = None,
    cfg: CaseConfig | None = None,
    extra_references: list[str] | tuple[str, ...] = (),
    image_scale: float = 1.0,
    upscale: int = 1,
) -> list[Path]:
    """Build evaluation cases from a multi-view folder (``SUBJECT/NN.jpg + NN_mask.png``).

    Args:
        source_dir: the multi-view photo folder.
        output_dir: where case folders ``{subject}_{k:02d}_{kind}`` are written (created); a case
            folder of that name already there is replaced whole (no file of an older case stays).
        seed: everything is a pure function of (seed, subject, k).
        subjects: subjects to use; default :data:`VALIDATION_SUBJECTS` (those present; an error
            if none is).
        cases_per_subject: cases per subject; kinds cycle affine, nonrigid, multiview (a subject
            with a single photo gets affine instead of multiview).
        artifacts: artifact names to cycle through (default: all of :data:`ARTIFACTS`, sorted).
        extra_references: roles of more references per case (:data:`EXTRA_ROLES`, repeats
            allowed): ``view`` another photo of the subject, ``partial`` another photo (or the
            target photo under a fresh transform where there is none) with part of the object cut
            away, ``distractor`` a photo of another subject. They are written as
            ``reference_2.png`` (+ ``reference_mask_2.png``), ...; ``meta.json`` gets
            ``references`` (the role of each file) and ``reference_order`` (the order to pass them
            in, shuffled so that the right reference is not always first). The case itself (image,
            mask, first reference) is the same as without extras: they draw from their own random
            stream.
        image_scale: below 1, the image, its mask and the target are scaled down by this factor
            (by area; the mask by nearest neighbour) after the case is built, the references are
            not: a reference photo at 1 / ``image_scale`` times the image's resolution, as a
            product shot beside a generated image often is. Outside the scaled mask the image is
            the scaled target. ``meta.json`` records ``image_scale`` (its ``transform`` stays in
            the full-size target's pixels). The case is otherwise the same.
        upscale: above 1, every picture of the case (image, target, references; bicubic) and every
            mask (artifact, reference objects, the true region; nearest) is scaled up by this whole
            factor once it is built (after ``image_scale``): the same case on a larger picture,
            for measuring how the pipeline's pixel-sized steps behave there. Outside the scaled
            mask the image is the scaled target (bicubic spreads the artifact's colours a few
            pixels past the mask's edge). The pictures gain pixels, not detail. ``meta.json`` records ``upscale`` (its ``transform`` stays in the
            case's own pixels before it).

    Returns: the case folders, in order.
    """
    if not 0.0 < float(image_scale) <= 1.0:
        raise ValueError(f"image_scale must be in (0, 1], got {image_scale}")
    if int(upscale) != upscale or not 1 <= int(upscale) <= MAX_UPSCALE:
        raise ValueError(f"upscale must be a whole number in 1..{MAX_UPSCALE}, got {upscale}")
    upscale = int(upscale)
    if int(cases_per_subject) != cases_per_subject or int(cases_per_subject) < 1:
        raise ValueError(f"cases per subject must be a whole number of 1 or more, got {cases_per_subject}")
    cfg = cfg or CaseConfig()
    src = Path(source_dir)
    subjects, names = _check_arguments(src, subjects, artifacts, extra_references)
    mv = MultiViewFolder(src, subjects=list(subjects), exclude=(), max_side=cfg.max_side, min_object_pixels=256)
    others = _distractor_pool(src, subjects, cfg) if "distractor" in extra_references else None
    out_root = Path(output_dir)

    written: list[Path] = []
    for si, subject in enumerate(mv.subjects):
        paths = mv.paths(subject)
        usable = [k for k in range(len(paths)) if mv.view(subject, k)[1].sum() >= 256]
        if not usable:
            raise DatasetError(f"subject '{subject}': no photo with a usable object mask")
        for k in range(cases_per_subject):
            rng = np.random.default_rng([int(seed), zlib.crc32(subject.encode()), k])
            kind = KINDS[k % len(KINDS)]
            if kind == "multiview" and len(usable) < 2:
                kind = "affine"
            artifact = names[(si + k) % len(names)]
            tv = usable[int(rng.integers(len(usable)))]
            target, obj = mv.view(subject, tv)
            h, w = obj.shape
            center = detail_center(target, obj, rng, inset=max(2, min(h, w) // 64), top=cfg.detail_top)
            amask = random_artifact_mask(obj, rng, cfg.mask, center=center)
            image = simulate_artifact(target, amask, artifact, rng)
            meta: dict = {
                "kind": kind, "artifact": artifact, "subject": subject, "target_view": paths[tv][0].name, "seed": int(seed),
                "case_index": k, "mask_area": float(amask.mean()), "size": [w, h],
            }
            reference, ref_mask, corr, views, transform = _first_reference(mv, subject, kind, tv, usable, target, obj, amask, rng, cfg, meta)
            extras = []
            if extra_references:
                extra_rng = np.random.default_rng([int(seed), zlib.crc32(subject.encode()), k, 1])
                extras = [
                    _extra_reference(role, mv, others, subject, views, target, obj, extra_rng, cfg) for role in extra_references
                ]
                meta["references"] = [{"file": "reference.png", "role": "right"}] + [
                    {"file": f"reference_{i + 2}.png", "role": role, "view": view} for i, (role, _, _, view) in enumerate(extras)
                ]
                meta["reference_order"] = [int(i) + 1 for i in extra_rng.permutation(len(extras) + 1)]
            if image_scale != 1.0:
                image, amask, target = _scaled_down(image, amask, target, float(image_scale))
                meta["image_scale"] = float(image_scale)
            if upscale != 1:
                image, target, reference = (_scaled_up(a, upscale) for a in (image, target, reference))
                amask, ref_mask = _scaled_up(amask, upscale, mask=True), _scaled_up(ref_mask, upscale, mask=True)
                image = np.where(amask[..., None], image, target)  # (the artifact's colours, bicubically spread, kept inside the mask)
                corr = None if corr is None else _scaled_up(corr, upscale, mask=True)
                extras = [(role, _scaled_up(r, upscale), _scaled_up(m, upscale, mask=True), view) for role, r, m, view in extras]
                meta["upscale"] = upscale
            truth = None if transform is None else true_field(transform, amask, (h, w), upscale)
            case = out_root / f"{subject}_{k:02d}_{kind}"
            _write_case(case, image, amask, reference, ref_mask, corr, target, meta, [(r, m) for _, r, m, _ in extras], truth)
            written.append(case)
    return written


def _check_arguments(src: Path, subjects, artifacts, extra_references) -> tuple[list[str], list[str]]:
    """:func:`make_cases`' subjects (default: the validation subjects present) and artifact names,
    checked; a clear error for a missing folder, unknown artifacts or extra-reference roles."""
    if not src.is_dir():
        raise DatasetError(f"source folder '{src}': not found (expected SUBJECT/NN.jpg + NN_mask.png)")
    if subjects is not None:
        subjects = list(subjects)
        if not subjects or any(not str(s).strip() for s in subjects):
            raise ValueError(f"subjects: an empty subject name in {subjects} (give subject folder names, comma-separated)")
        odd = [s for s in subjects if str(s).strip() in (".", "..") or any(c in str(s) for c in "/\\")]
        if odd:  # (a case folder is named after its subject: "../x" would be written outside the output folder)
            raise ValueError(f"subjects: {', '.join(map(repr, odd))} is not a subject folder's name (give names of folders inside the source folder)")
        twice = sorted({s for s in subjects if subjects.count(s) > 1})
        if twice:
            raise ValueError(f"subjects: {', '.join(twice)} named more than once (each subject once; its cases are --per-subject)")
    if subjects is None:
        subjects = [s for s in VALIDATION_SUBJECTS if (src / s).is_dir()]
        if not subjects:
            raise DatasetError(
                f"source folder '{src}': none of the default validation subjects "
                f"({', '.join(VALIDATION_SUBJECTS)}) is there; pass subjects explicitly"
            )
    names = sorted(ARTIFACTS) if artifacts is None else list(artifacts)
    unknown = [a for a in names if a not in ARTIFACTS]
    if unknown or not names:
        raise ValueError(f"unknown artifact(s) {unknown}; registered: {sorted(ARTIFACTS)}")
    bad_roles = [r for r in extra_references if r not in EXTRA_ROLES]
    if bad_roles:
        raise ValueError(f"unknown extra reference role(s) {bad_roles}; choose from {', '.join(EXTRA_ROLES)}")
    return list(subjects), names


def _distractor_pool(src: Path, subjects, cfg: CaseConfig) -> MultiViewFolder:
    """Every other subject of the source folder: where distractor references come from."""
    pool = sorted(d.name for d in src.iterdir() if d.is_dir() and d.name not in set(subjects) and not d.name.startswith("."))
    if not pool:
        raise DatasetError(f"source folder '{src}': no other subject to take a distractor reference from")
    return MultiViewFolder(src, subjects=pool, exclude=(), max_side=cfg.max_side, min_object_pixels=256)


def _first_reference(mv, subject, kind, tv, usable, target, obj, amask, rng, cfg: CaseConfig, meta: dict):
    """The case's own reference: another photo (multiview) or the target photo's object under a
    random transform and colour change (affine / nonrigid, with the true region). Returns
    (reference, its mask, the true region or None, the views used so far, the transform from the
    target photo to the reference or None); fills ``meta``."""
    paths = mv.paths(subject)
    h, w = obj.shape
    corr = t = None
    if kind == "multiview":
        rv = [v for v in usable if v != tv][int(rng.integers(len(usable) - 1))]
        reference, ref_mask = mv.view(subject, rv)
        meta["reference_view"] = paths[rv][0].name
        meta["transform"] = None
        views = {tv, rv}
    else:
        gcfg = cfg.affine if kind == "affine" else cfg.nonrigid
        t = random_transform(rng, (h, w), gcfg, box=mask_bbox(obj), out_shape=(h, w))
        src_img = np.where(obj[..., None], target, 0).astype(np.uint8)
        src_img = apply_color(src_img, sample_color(rng, cfg.color), obj)
        maps = t.inverse_maps() if t.field is not None else None
        reference = warp_image(src_img, t, cv2.INTER_CUBIC, maps=maps)
        ref_mask = warp_mask(obj, t, maps=maps)
        reference = np.where(ref_mask[..., None], reference, 0).astype(np.uint8)
        corr = warp_mask(amask, t, maps=maps) & ref_mask
        meta["reference_view"] = paths[tv][0].name
        meta["transform"] = {
            "matrix": t.matrix.tolist(),
            "nonrigid": t.field is not None,
            "params": {kk: (list(v) if isinstance(v, tuple) else v) for kk, v in t.params.items()},
        }
        views = {tv}
    meta["has_correspondence"] = corr is not None
    return reference, ref_mask, corr, views, t


def _extra_reference(role, mv, others, subject, views: set, target, obj, rng, cfg: CaseConfig):
    """One extra reference of ``role``: (role, image, object mask, the photo's name). ``views``
    (the photos of the subject used so far) grows by the photo taken, so two ``view`` extras differ."""
    if role == "distractor":
        other = others.subjects[int(rng.integers(len(others.subjects)))]
        v = int(rng.integers(others.n_views(other)))
        image, mask = others.view(other, v)
        return role, image, mask, f"{other}/{others.paths(other)[v][0].name}"
    free = [v for v in range(mv.n_views(subject)) if v not in views and mv.view(subject, v)[1].sum() >= 256]
    if free:
        v = free[int(rng.integers(len(free)))]
        views.add(v)
        image, mask = mv.view(subject, v)
        name = mv.paths(subject)[v][0].name
    else:  # no other photo left: the target photo's object under a fresh transform
        t = random_transform(rng, obj.shape, cfg.affine, box=mask_bbox(obj), out_shape=obj.shape)
        image = warp_image(np.where(obj[..., None], target, 0).astype(np.uint8), t, cv2.INTER_CUBIC)
        mask = warp_mask(obj, t)
        name = "target (transformed)"
    if role == "partial":  # cut the object by a random line through its middle: 40-70 % of it stays
        mask = _cut_object(mask, rng)
        image = np.where(mask[..., None], image, 0).astype(np.uint8)
    return role, image, mask, name


def _cut_object(mask: np.ndarray, rng: np.random.Generator, keep: tuple[float, float] = (0.4, 0.7)) -> np.ndarray:
    """The object ``mask`` on one side of a random straight line, keeping a fraction in ``keep``."""
    ys, xs = np.nonzero(mask)
    theta = rng.uniform(0, 2 * np.pi)
    proj = xs * np.cos(theta) + ys * np.sin(theta)
    cut = np.quantile(proj, 1.0 - rng.uniform(*keep))
    out = np.zeros_like(mask)
    out[ys[proj >= cut], xs[proj >= cut]] = True
    return out


def _scaled_down(image: np.ndarray, amask: np.ndarray, target: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, artifact mask, target) scaled down by ``scale`` (area; the mask nearest), the image
    equal to the scaled target outside the scaled mask (the artifact does not bleed out of it)."""
    h, w = amask.shape
    size = (max(8, int(round(w * scale))), max(8, int(round(h * scale))))
    t = cv2.resize(np.ascontiguousarray(target), size, interpolation=cv2.INTER_AREA)
    im = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(amask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    if not m.any():  # (a mask thinner than the scale: its strongest pixel kept)
        area = cv2.resize(amask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        m = area >= area.max()
    return np.where(m[..., None], im, t), m, t


#: :func:`make_cases`' largest ``upscale`` (a 512 px case at 8x is 4096 px).
MAX_UPSCALE = 8


def _scaled_up(a: np.ndarray, factor: int, mask: bool = False) -> np.ndarray:
    """A picture (H, W, 3) uint8 scaled up ``factor`` times (bicubic), or with ``mask`` an (H, W)
    mask (nearest; returned as bool)."""
    h, w = a.shape[:2]
    size = (w * factor, h * factor)
    if mask:
        return cv2.resize(np.asarray(a).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return cv2.resize(np.ascontiguousarray(a), size, interpolation=cv2.INTER_CUBIC)


#: :func:`true_field` covers the artifact mask's box grown by this many pixels.
TRUE_FIELD_MARGIN = 8


def true_field(transform, mask: np.ndarray, target_shape: tuple[int, int], upscale: int = 1, margin: int = TRUE_FIELD_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """Where each image pixel around the artifact truly lands on the reference: (origin (2,) int32
    (x0, y0), xy (h, w, 2) float32) over the box of ``mask`` (the case's artifact mask, in its own
    final pixels) grown by ``margin`` px, NaN where the transform leaves the reference's canvas.

    ``transform`` (:class:`~refine_by_align.data.perturb.GeomTransform`) takes the target photo
    (``target_shape`` (H, W)) to the reference; an image scaled down from that photo (its size is
    ``mask``'s, over ``upscale``) and a case scaled up by ``upscale`` (image and reference alike)
    are accounted for, pixel centres mapped as OpenCV's resize maps them. A non-rigid transform's
    forward mapping is solved by fixed-point iteration; a point it does not bring within 0.01 px
    of its source is NaN."""
    h, w = mask.shape
    box = mask_bbox(mask)
    x0, y0 = max(box.x0 - margin, 0), max(box.y0 - margin, 0)
    x1, y1 = min(box.x1 + margin, w), min(box.y1 + margin, h)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    u = float(upscale)
    xs, ys = (xs + 0.5) / u - 0.5, (ys + 0.5) / u - 0.5  # the case's pixels before it was scaled up
    th, tw = target_shape
    sw, sh = w / u, h / u  # the image's size before the upscale (the target photo's, or smaller)
    xs, ys = (xs + 0.5) * (tw / sw) - 0.5, (ys + 0.5) * (th / sh) - 0.5  # the target photo's pixels
    src = np.stack([xs.ravel(), ys.ravel()], axis=1)
    t = replace(transform, iters=max(int(transform.iters), 30))
    out = t.forward_points(src)
    back = t.inverse_points(out)
    bad = ~np.isfinite(out).all(axis=1) | ~(np.linalg.norm(back - src, axis=1) <= 0.01) | t.off_canvas(out)
    out = (out + 0.5) * u - 0.5  # the reference's pixels after the upscale
    out[bad] = np.nan
    return np.int32([x0, y0]), out.reshape(y1 - y0, x1 - x0, 2).astype(np.float32)


def _write_case(case: Path, image, amask, reference, ref_mask, corr, target, meta: dict, extras: list, truth=None) -> None:
    """One case folder (see the module docstring), holding only what this build writes: the case is
    written into a fresh hidden folder beside it, which then takes its place (an earlier build's
    folder of that name, with whatever it held, is removed). ``truth``: :func:`true_field`'s
    (origin, xy), or None."""
    case.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case.name}.", suffix=".partial", dir=case.parent))
    try:
        _save_rgb(image, tmp / "image.png")
        _save_mask(amask, tmp / "mask.png")
        _save_rgb(np.ascontiguousarray(reference), tmp / "reference.png")
        _save_mask(ref_mask, tmp / "reference_mask.png")
        if corr is not None:
            _save_mask(corr, tmp / "correspondence.png")
        if truth is not None:
            np.savez_compressed(tmp / "true_field.npz", origin=truth[0], xy=truth[1])
        for i, (ref, mask) in enumerate(extras):
            _save_rgb(np.ascontiguousarray(ref), tmp / f"reference_{i + 2}.png")
            _save_mask(mask, tmp / f"reference_mask_{i + 2}.png")
        _save_rgb(target, tmp / "target.png")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o777 & ~_umask())  # (mkdtemp makes it 0700; a case folder is made as mkdir makes one)
        if case.is_dir() and not case.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{case.name}.", suffix=".old", dir=case.parent))
            os.replace(case, old / case.name)
            os.replace(tmp, case)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if case.is_symlink() or case.exists():
                case.unlink()
            os.replace(tmp, case)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
