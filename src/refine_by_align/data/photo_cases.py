"""Case sets whose reference is the artifact-free photo itself, given without a mask.

The user who repairs a photo that a generative model has redrawn (relit, upscaled, re-saved) holds
the original photo: the reference shows the same view, with its background, and nobody draws its
object's mask. :func:`photo_reference_cases` derives such a set from a case folder (``make-cases``'
format, which holds each case's artifact-free ``target.png``): the reference is the target cut by
``crop_px`` on each side and scaled to ``reference_size``, and the image and its truth can be
edited alike (a colour change, a blur, a picture made at a lower resolution), the image alone saved
as JPEG. The thirty-second session's measurements (MODEL_CARD.md) are these sets built from val2
and val3: ``refine-by-align derive-cases`` with the defaults ("same photo"), with ``--gamma 0.85
--gains 1.08,1,0.92 --blur 0.8 --jpeg 85`` ("edited") and with ``--gamma 1.1 --gains 0.95,1,1.06
--offset 0.02 --soften 0.7 --jpeg 90`` ("edited2").
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..io import InputError, check_output_apart, save_image_atomic

__all__ = ["PhotoEdit", "edit_picture", "photo_reference_cases"]


@dataclass(frozen=True)
class PhotoEdit:
    """How a derived case's reference and image are made from the case's own artifact-free photo."""

    crop_px: int = 20  # px cut from each side of the photo before it becomes the reference
    reference_size: int = 560  # the reference's side after the crop (Lanczos): another scale than the image's
    gamma: float = 1.0  # the image and its truth: each channel in [0, 1] raised to this power ...
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # ... times these gains (R, G, B) ...
    offset: float = 0.0  # ... plus this (in [0, 1] units)
    blur: float = 0.0  # then a Gaussian blur of this sigma (px; 0: none)
    soften: float = 1.0  # then scaled to this share of its size by area and back by bicubic (1: not): made at a lower resolution
    jpeg: int | None = None  # the image alone (not its truth) saved as JPEG at this quality (None: PNG as it is)

    def check(self) -> None:
        """One InputError naming the setting that makes no sense."""
        if self.crop_px < 0:
            raise InputError(f"crop must be 0 or more px, got {self.crop_px}")
        if not 16 <= self.reference_size <= 8192:
            raise InputError(f"reference size must be 16..8192 px, got {self.reference_size}")
        if not 0.1 <= self.gamma <= 10.0:
            raise InputError(f"gamma must be in 0.1..10, got {self.gamma}")
        if len(self.gains) != 3 or not all(0.0 < g <= 10.0 for g in self.gains):
            raise InputError(f"gains must be three numbers in (0, 10], got {self.gains}")
        if not -1.0 <= self.offset <= 1.0:
            raise InputError(f"offset must be in -1..1, got {self.offset}")
        if not 0.0 <= self.blur <= 20.0:
            raise InputError(f"blur must be 0..20 px, got {self.blur}")
        if not 0.05 <= self.soften <= 1.0:
            raise InputError(f"soften must be a share in 0.05..1, got {self.soften}")
        if self.jpeg is not None and not 1 <= self.jpeg <= 100:
            raise InputError(f"JPEG quality must be 1..100, got {self.jpeg}")


def edit_picture(rgb: np.ndarray, edit: PhotoEdit) -> np.ndarray:
    """(H, W, 3) uint8 -> the same edited by ``edit``'s colour change, blur and softening (no JPEG)."""
    out = rgb
    if edit.gamma != 1.0 or edit.gains != (1.0, 1.0, 1.0) or edit.offset != 0.0 or edit.blur > 0:
        f = rgb.astype(np.float32) / 255.0
        f = np.clip(f**edit.gamma * np.asarray(edit.gains, np.float32) + edit.offset, 0.0, 1.0)
        if edit.blur > 0:
            f = cv2.GaussianBlur(f, (0, 0), edit.blur)
        out = np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if edit.soften < 1.0:
        h, w = out.shape[:2]
        small = cv2.resize(out, (max(1, round(w * edit.soften)), max(1, round(h * edit.soften))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return out


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def photo_reference_cases(cases_dir: str | Path, output: str | Path, edit: PhotoEdit = PhotoEdit(), prefix: str = "") -> list[Path]:
    """Derive a case set (see the module's docstring) from every case of ``cases_dir`` that has a
    ``target.png``; each derived case is ``output/<prefix><case>``, its ``meta.json`` the source's
    with ``"derived": {"from": ..., **edit}``. Deterministic (no randomness). Returns the folders
    written; an InputError where ``cases_dir`` holds no case with a target.

    Everything is checked before anything is written (an InputError leaves no folder or file
    behind): ``output`` must not be ``cases_dir`` or lie inside it, every case must have its
    image, mask and a target the crop leaves something of, and no derived case folder may already
    hold files (an earlier build's reference mask, true region or true field would otherwise sit
    beside the new reference: nothing is deleted, the folder is refused)."""
    edit.check()
    src, dst = Path(cases_dir), Path(output)
    folders = sorted(p for p in src.iterdir() if p.is_dir() and (p / "target.png").exists()) if src.is_dir() else []
    if not folders:
        raise InputError(f"{src}: no case folder with a target.png (the artifact-free photo the reference is made from)")
    check_output_apart(dst, {"cases": src}, "--output")
    c = edit.crop_px
    for case in folders:
        missing = [n for n in ("image.png", "mask.png") if not (case / n).is_file()]
        if missing:
            raise InputError(f"{case}: no {' or '.join(missing)} (a case folder holds image.png, mask.png and target.png)")
        try:
            with Image.open(case / "target.png") as im:
                w, h = im.size
        except (OSError, ValueError) as e:
            raise InputError(f"{case / 'target.png'}: cannot be read ({e})") from None
        if 2 * c >= min(h, w):
            raise InputError(f"{case}: a crop of {c} px a side leaves nothing of a {w}x{h} photo")
    held = [d for d in (dst / f"{prefix}{case.name}" for case in folders) if d.exists() and (not d.is_dir() or any(d.iterdir()))]
    if held:
        names = ", ".join(d.name for d in held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise InputError(
            f"--output '{dst}' already holds case folder(s) {names}: files of an earlier build would stay beside the new ones "
            "(nothing is deleted); give a new folder, another --prefix, or remove them"
        )
    written = []
    for case in folders:
        out = dst / f"{prefix}{case.name}"
        out.mkdir(parents=True, exist_ok=True)
        target = np.asarray(Image.open(case / "target.png").convert("RGB"))
        image = np.asarray(Image.open(case / "image.png").convert("RGB"))
        h, w = target.shape[:2]
        reference = Image.fromarray(target).crop((c, c, w - c, h - c)).resize((edit.reference_size, edit.reference_size), Image.LANCZOS)
        save_image_atomic(reference, out / "reference.png")
        edited = edit_picture(image, edit)
        if edit.jpeg is not None:
            edited = _jpeg(edited, edit.jpeg)
        save_image_atomic(Image.fromarray(edited), out / "image.png")
        save_image_atomic(Image.fromarray(edit_picture(target, edit)), out / "target.png")
        shutil.copyfile(case / "mask.png", out / "mask.png")
        meta = json.loads((case / "meta.json").read_text()) if (case / "meta.json").exists() else {}
        meta["source_kind"], meta["kind"] = meta.get("kind"), "photo"  # one kind: the reference is the photo itself
        meta["derived"] = {"from": str(case), "reference": "the target, cropped and scaled, no mask", **asdict(edit)}
        (out / "meta.json").write_text(json.dumps(meta, indent=2))
        written.append(out)
    return written
