"""Loading and validating user images, masks and references.

Every problem with a user-supplied file ends in one :class:`InputError` whose message names the
file and the problem, so the CLI can print one line and exit with code 2.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import tempfile
import warnings
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DETECT_METHODS  # re-exported: the detection's method names, checked here

__all__ = [
    "InputError",
    "open_image",
    "decode_image",
    "read_file",
    "load_image",
    "load_inputs",
    "check_input_sizes",
    "load_mask",
    "to_rgb",
    "to_mask",
    "alpha_mask",
    "mask_from_levels",
    "in_input_mode",
    "validate_inputs",
    "check_reference_mask",
    "check_settings",
    "check_detect_settings",
    "DETECT_METHODS",
    "save_image_atomic",
    "save_image",
    "output_format",
    "save_images_atomic",
    "encode_image",
    "check_seed",
    "as_image",
    "as_mask",
    "write_atomic",
    "same_file",
    "check_output_path",
    "check_output_folder",
    "check_output_apart",
    "output_mode",
    "check_output_holds",
]

# Largest accepted image (pixels). Pillow's own bomb check fires at twice its MAX_IMAGE_PIXELS.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class InputError(ValueError):
    """A user input that cannot be used; the message is meant for the user, one line."""


def _label(what: str, name: str | os.PathLike | None) -> str:
    return f"{what} '{name}'" if name is not None and str(name) else what


#: The formats an input picture is read in (Pillow's names; a phone's MPO opens as JPEG). Pillow
#: knows more, and some of them hand the data to another program: an EPS upload is rendered by
#: Ghostscript where one is installed, which a server must not do with untrusted bytes.
READ_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP", "DIB", "GIF", "PPM", "TGA", "ICO", "JPEG2000", "AVIF", "QOI", "PSD", "SGI", "PCX")


def _bomb_message(label: str) -> str:
    """What a picture over Pillow's pixel limit is told (Pillow's own text speaks of an attack)."""
    limit = Image.MAX_IMAGE_PIXELS
    return f"{label}: image too large: more than {limit:,} pixels (the decompression bomb guard); give a smaller picture"


def open_image(
    data: bytes,
    what: str = "image",
    name: str | os.PathLike | None = None,
    *,
    max_side: int | None = None,
    too_large: type[InputError] = InputError,
) -> Image.Image:
    """Read an image's header only (Pillow's lazy open): the returned image knows its size and mode,
    no pixel is decoded yet. Refuses, as one InputError naming ``what`` and ``name``: empty data, an
    unknown or corrupt format or one not in :data:`READ_FORMATS`, a zero size, more than :data:`MAX_PIXELS` pixels (decompression bomb)
    and, with ``max_side``, a longer side than that (both raised as ``too_large``). The size is the
    stored one, before any EXIF rotation."""
    label = _label(what, name)
    if not data:
        raise InputError(f"{label}: empty file (0 bytes), not a readable image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(BytesIO(data), formats=READ_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise too_large(_bomb_message(label)) from None
    except UnidentifiedImageError:
        raise InputError(f"{label}: not a readable image (unknown or corrupt format; PNG, JPEG, TIFF, WebP, BMP, GIF and a few more are read)") from None
    except MemoryError:
        raise
    except Exception as e:  # a malformed header can raise nearly anything from a Pillow plugin
        raise InputError(f"{label}: cannot be decoded ({_one_line(e)})") from None
    if img.width < 1 or img.height < 1:
        raise InputError(f"{label}: image has zero size")
    if max_side is not None and max(img.size) > max_side:
        raise too_large(f"{label}: {img.width}x{img.height} is larger than the limit of {max_side} px per side")
    return img


def decode_image(
    data: bytes,
    what: str = "image",
    name: str | os.PathLike | None = None,
    *,
    max_side: int | None = None,
    too_large: type[InputError] = InputError,
) -> Image.Image:
    """Decode an image file's bytes (any format and mode Pillow reads; EXIF rotation applied). The
    header is checked first (:func:`open_image`: size limits before any pixel is decoded); every
    problem is one InputError naming ``what`` and ``name``. Used for files (:func:`load_image`) and
    for the server's uploads alike."""
    img = open_image(data, what, name, max_side=max_side, too_large=too_large)
    label = _label(what, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise too_large(_bomb_message(label)) from None
    except MemoryError:
        raise
    except Exception as e:  # truncated or corrupt pixel data
        raise InputError(f"{label}: cannot be decoded ({_one_line(e)})") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not stop us: keep the pixels as stored
        pass
    return img


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def read_file(path: str | os.PathLike, what: str = "image", kind: str = "an image file") -> bytes:
    """A user file's bytes; a missing file, a folder or an unreadable file is one InputError
    (``kind``: what the file should be, for the folder message)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} '{path}': file not found")
    if path.is_dir():
        raise InputError(f"{what} '{path}': is a folder, not {kind}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"{what} '{path}': cannot be read ({e.strerror or e})") from None


_GREY_MODES = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "F")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def grey_levels(img: Image.Image) -> tuple[np.ndarray, float]:
    """A 16-bit, 32-bit integer or float grey picture's values ((H, W) float64, NaN as 0) and its
    full level, read from the values' range: 1 for floats within 0..1, 255 within 0..255, 65535
    within 0..65535 (a float TIFF saved in 0..255 was read as 0..1 and came back all white). Other
    ranges (negative values, beyond 65535: a depth map, a 32-bit count) are one InputError."""
    arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or not np.isfinite(hi) or hi > 65535:
        raise InputError(f"a {img.mode} picture with values {lo:g}..{hi:g}: only 0..1, 0..255 or 0..65535 can be read as grey levels (save it as 8- or 16-bit)")
    return arr, _full_level(hi, img.mode == "F")


def _full_level(hi: float, floating: bool) -> float:
    """The full level of values whose largest is ``hi``: 1 for floats within 0..1, else 255 within
    0..255, else 65535 (:func:`grey_levels`' and :func:`as_mask`'s one rule)."""
    return 1.0 if floating and hi <= 1.0 else 255.0 if hi <= 255 else 65535.0


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (RGBA, L, P, I;16, CMYK, ...) -> 8-bit RGB (wide greys by :func:`grey_levels`)."""
    if img.mode in _WIDE_GREY_MODES:
        arr, full = grey_levels(img)
        img = Image.fromarray(np.clip(arr / full * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if _has_alpha(img):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def alpha_mask(img: Image.Image) -> np.ndarray | None:
    """The alpha channel as a boolean object mask, or None if the image has no useful alpha."""
    if _has_alpha(img):
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha >= 128
    return None


def in_input_mode(original: Image.Image, working: np.ndarray, refined: np.ndarray) -> Image.Image:
    """The refined picture in the kind of picture it was given as.

    The pipeline works on :func:`to_rgb` of ``original`` (``working``, (H, W, 3) uint8: colour,
    transparency composited over black) and returns ``refined`` of the same shape, equal to
    ``working`` outside the (dilated) mask. This gives it back as ``original`` came:

    - a grey picture (L, LA, 1, 16-bit or float grey) comes back grey (L; LA with its alpha); a
      colour reference's colours inside the mask become their luma;
    - a picture with an alpha channel keeps it: every pixel the pipeline left alone keeps its own
      straight colour and alpha (bit-identical to ``original`` as RGBA / LA), and each changed
      pixel gets the refined colour over black divided by its alpha (the inverse of the
      compositing; clipped), its alpha as it was.

    16-bit and float greys come back as 8-bit grey (as :func:`to_rgb` reads them); other modes
    (P without transparency, CMYK, YCbCr, ...) as RGB."""
    mode = output_mode(original)
    if mode in ("RGB", "L"):
        out = Image.fromarray(np.ascontiguousarray(refined, dtype=np.uint8), "RGB")
        return out.convert(mode) if mode == "L" else out
    rgba = np.array(original.convert("RGBA"))  # (H, W, 4) straight colour and alpha
    alpha = rgba[..., 3]
    changed = (refined != working).any(axis=-1) & (alpha > 0)
    scale = 255.0 / np.maximum(alpha[changed], 1).astype(np.float32)[:, None]
    rgba[..., :3][changed] = np.clip(np.rint(refined[changed].astype(np.float32) * scale), 0, 255).astype(np.uint8)
    out = Image.fromarray(rgba, "RGBA")
    return out.convert(mode) if mode == "LA" else out


def mask_from_levels(levels: np.ndarray, full: float) -> np.ndarray:
    """A mask's grey levels (any shape, ``full`` = the brightest level the format holds) -> bool:
    pixels at half range or brighter mark the artifact, so a soft or antialiased stroke counts where
    it is at least half drawn. A mask with no pixel that bright but some above zero (saved as 0 / 1,
    or dimmed) marks every nonzero pixel instead: it is a mask drawn in low values, not an empty one."""
    levels = np.nan_to_num(np.asarray(levels, dtype=np.float64), nan=0.0)
    drawn = levels >= full / 2
    return drawn if drawn.any() else levels > 0


def as_image(value, what: str = "image") -> Image.Image:
    """A picture the library takes: a PIL image as it is, or an 8-bit array ((H, W), (H, W, 3) or
    (H, W, 4) uint8) as one; anything else is one InputError naming ``what`` (an array of floats
    has no agreed scale: give uint8 pixels)."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8:
            raise InputError(f"{what}: a {value.dtype} array; give 8-bit (uint8) pixels or a PIL image")
        if value.ndim == 2 or (value.ndim == 3 and value.shape[2] in (3, 4)):
            return Image.fromarray(np.ascontiguousarray(value))
        raise InputError(f"{what}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {value.shape}")
    raise InputError(f"{what}: expected a PIL image or an 8-bit (H, W, 3) array, got {type(value).__name__}")


def as_mask(value, what: str = "mask") -> np.ndarray:
    """A mask the library takes, as (H, W) bool, read as a mask file is (:func:`mask_from_levels`):
    a PIL image by :func:`to_mask`; a bool array as it is; an integer array against 255 (65535
    where larger values occur); a float array against 1 (255, 65535 where larger values occur),
    NaN as 0; a colour array (H, W, 3) by its brightest channel. So a soft mask means the same as
    an array, as a file and from ComfyUI. None or another shape is one InputError naming ``what``."""
    if value is None:
        raise InputError(f"{what}: required (an (H, W) array or a picture), got None")
    if isinstance(value, Image.Image):
        return to_mask(value)
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[2] in (1, 3):
        arr = arr.max(axis=2)
    if arr.ndim != 2:
        raise InputError(f"{what}: expected an (H, W) array, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise InputError(f"{what}: an array of {arr.dtype}; give bool or numbers")
    levels = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    hi = float(levels.max()) if levels.size else 0.0
    return mask_from_levels(levels, _full_level(hi, np.issubdtype(arr.dtype, np.floating)))


def to_mask(img: Image.Image) -> np.ndarray:
    """Any single-channel or colour image -> boolean mask (:func:`mask_from_levels`): the pixels at
    half range or brighter, or every nonzero pixel where none is that bright (a 0 / 1 mask)."""
    if _has_alpha(img):
        rgba = np.asarray(img.convert("RGBA")).astype(np.float32)
        return mask_from_levels(rgba[..., :3].max(axis=-1) * (rgba[..., 3] / 255.0), 255.0)
    if img.mode == "1":
        return np.asarray(img, dtype=bool)
    if img.mode in _WIDE_GREY_MODES:
        return mask_from_levels(*grey_levels(img))
    return mask_from_levels(np.asarray(img.convert("RGB")).max(axis=-1), 255.0)


def load_image(path: str | os.PathLike, what: str = "image", *, max_side: int | None = None) -> Image.Image:
    """Open an image file of any mode and size; returns the decoded PIL image (EXIF-rotated)."""
    return decode_image(read_file(path, what), what, path, max_side=max_side)


def load_mask(path: str | os.PathLike, what: str = "mask") -> np.ndarray:
    return to_mask(load_image(path, what))


#: The largest share of the image an artifact mask may mark: the method redraws localised
#: artifacts from the image around them, and a mask over most of the image is nearly always an
#: inverted one (the artifact black on white), which would have the whole picture redrawn.
MAX_MASK_SHARE = 0.5

#: A mask picture with more than this share of its pixels at middle levels (from a quarter to three
#: quarters of the full range, as :func:`to_mask` reads them) and more than MASK_MAX_COLOURS
#: distinct colours is a photo, not a mask. A drawn mask is black and white with a soft or
#: antialiased edge: none of the pixels of the shipped examples' and the 192 suite cases' masks are
#: at middle levels, at most 16% of the dataset's soft object masks; the dataset's 105 photos, read
#: as masks, 66% in the median (6-95%). A mask drawn in one middle level (a grey or dark-red brush,
#: a half-opaque layer) or a wide soft brush has middle levels too, but a few hundred colours at
#: most (one per level of the brush), where a photo has tens of thousands: 91 of the 105 photos
#: are refused.
MASK_MIDDLE_SHARE = 0.25
MASK_MAX_COLOURS = 4096


def check_mask_picture(mask: Image.Image | np.ndarray, what: str) -> None:
    """One InputError (naming ``what``) where a mask picture is a photo rather than a mask: more
    than :data:`MASK_MIDDLE_SHARE` of its pixels at middle levels and more than
    :data:`MASK_MAX_COLOURS` distinct colours (a quarter of its pixels, at least 512, in a picture
    of under 16,384 pixels) (a copy of the image with the artifact painted over,
    given as the mask, would have its bright parts read as the artifact). ``mask``: a picture, or
    an 8-bit colour array (H, W, 3); anything else is not checked here."""
    if isinstance(mask, np.ndarray):
        if mask.dtype != np.uint8 or mask.ndim != 3 or mask.shape[2] != 3:
            return
        rgb = mask
    elif mask.mode in ("1", "L") or mask.mode in _WIDE_GREY_MODES:  # (grey: a few hundred levels at most)
        return
    else:
        rgba = np.asarray(mask.convert("RGBA"))
        rgb, alpha = rgba[..., :3], rgba[..., 3]
        if alpha.min() < 255:  # (read as its colour over black, as to_mask reads it)
            rgb = ((rgb.astype(np.uint16) * alpha[..., None] + 127) // 255).astype(np.uint8)
    step = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / 1_000_000))))  # at most about a million pixels looked at
    sample = rgb[::step, ::step]
    level = sample.max(axis=-1)
    share = float(((level >= 64) & (level < 192)).mean()) if level.size else 0.0
    if share <= MASK_MIDDLE_SHARE:
        return
    packed = (sample[..., 0].astype(np.uint32) << 16) | (sample[..., 1].astype(np.uint32) << 8) | sample[..., 2]
    colours = len(np.unique(packed))
    if colours > min(MASK_MAX_COLOURS, max(512, packed.size // 4)):  # (a small picture cannot have that many)
        raise InputError(
            f"{what}: {share:.0%} of its pixels are neither dark nor bright, in {colours:,} colours: this looks like a photo, "
            "not a mask (a mask is black, with the artifacts marked in white; paint them on a black picture of the image's size)"
        )


def check_reference_mask(reference_mask: np.ndarray | None, reference_size: tuple[int, int], name: Callable[[str], str], from_alpha: bool) -> None:
    """InputError for a reference mask ((Hr, Wr) bool, or None: nothing to check) of another size
    than the reference's ``reference_size`` (w, h) or with no object. ``name``: role -> how the
    message calls it (with its file); ``from_alpha``: the mask is the reference's alpha channel
    (no mask was given), which the message then names. Shared by :func:`validate_inputs` and the
    artifact detection."""
    if reference_mask is None:
        return
    w, h = reference_size
    if reference_mask.shape != (h, w):
        raise InputError(f"{name('reference_mask')}: size {reference_mask.shape[1]}x{reference_mask.shape[0]} does not match the reference {w}x{h}")
    if not reference_mask.any():
        if from_alpha:
            raise InputError(
                f"{name('reference')}: its alpha channel is empty (fully transparent: no object to align with); "
                "give a reference mask or a reference whose object is opaque"
            )
        raise InputError(f"{name('reference_mask')}: reference mask is empty (no object)")


def validate_inputs(
    image: Image.Image,
    mask: np.ndarray,
    reference: Image.Image,
    reference_mask: np.ndarray | None = None,
    names: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    from_alpha: bool | None = None,
) -> None:
    """Raise InputError for inputs no method can work with. ``names`` maps role -> file name,
    ``labels`` role -> how messages call it (e.g. ``reference #2``; default: the role).
    ``from_alpha``: the reference mask is the reference's alpha channel (no mask was given; None:
    inferred from ``names``, a named reference without a named mask file)."""
    names, labels = names or {}, labels or {}

    def name(role: str) -> str:
        return f"{labels.get(role, role)} '{names[role]}'" if role in names else labels.get(role, role)

    if min(image.size) < 8:
        raise InputError(f"{name('image')}: {image.width}x{image.height} is too small (need at least 8x8)")
    if min(reference.size) < 8:
        raise InputError(
            f"{name('reference')}: {reference.width}x{reference.height} is too small (need at least 8x8)"
        )
    if mask.shape != (image.height, image.width):
        raise InputError(
            f"{name('mask')}: size {mask.shape[1]}x{mask.shape[0]} does not match the image "
            f"{image.width}x{image.height}"
        )
    if not mask.any():
        raise InputError(f"{name('mask')}: mask is empty (every pixel is 0: nothing marks an artifact)")
    if mask.all():
        raise InputError(f"{name('mask')}: mask covers the whole image; nothing is left to align with")
    if mask.mean() > MAX_MASK_SHARE:
        raise InputError(
            f"{name('mask')}: the mask marks {mask.mean():.1%} of the image; it must mark the artifacts in white (or "
            f"bright) on black, at most {MAX_MASK_SHARE:.0%} of the image: is it inverted?"
        )
    # both stages work on one square crop of at most the image's shorter side (zoom.zoom_box, which
    # holds every mask whose span fits it): pixels beyond it would be left as they are
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    span_w, span_h, side = int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1), min(image.width, image.height)
    if max(span_w, span_h) > side:
        raise InputError(
            f"{name('mask')}: the marked pixels span {span_w}x{span_h} px, more than the {side} px square the refinement "
            "works on (at most the image's shorter side); refine the mask in parts that each fit in such a square"
        )
    if from_alpha is None:  # (no mask file named beside named files: the mask came from the reference's alpha channel)
        from_alpha = bool(names) and "reference_mask" not in names
    check_reference_mask(reference_mask, reference.size, name, from_alpha=from_alpha)


INPUT_ROLES = ("image", "mask", "reference", "reference_mask")


#: how :func:`check_settings` names the settings: the Python API's argument names
SETTING_NAMES = {"steps": "steps", "guidance": "guidance", "samples": "num_samples"}
#: the command line's option names for the same settings
SETTING_OPTIONS = {"steps": "--steps", "guidance": "--guidance", "samples": "--samples"}


MAX_SEED = 2**63 - 1  # torch.Generator's seeds: the same range as the command line, the server and batch


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` as a Python int (a numpy integer is one), or one InputError naming ``what``."""
    try:
        value = operator.index(seed)
    except TypeError:
        value = None
    if value is None or isinstance(seed, bool) or not 0 <= value <= MAX_SEED:
        raise InputError(f"{what} must be an integer in 0..2^63-1, got {seed!r}")
    return value


def check_matchers(matchers: str, what: str = "matchers") -> tuple[str, ...]:
    """The dense alignment's match sources named in ``matchers`` ("sift+aliked": joined by "+",
    from :data:`~refine_by_align.config.MATCH_SOURCES`), or one InputError naming ``what``."""
    from .config import MATCH_SOURCES

    sources = tuple(x.strip() for x in str(matchers).split("+") if x.strip())
    bad = [x for x in sources if x not in MATCH_SOURCES]
    if not sources or bad:
        raise InputError(f"{what} '{matchers}': choose sources from {', '.join(MATCH_SOURCES)}, joined by '+' (e.g. sift+aliked)")
    return sources


def check_settings(steps: int | None, guidance: float | None, samples: int | None = None, names: dict[str, str] | None = None) -> None:
    """Reject meaningless sampling settings at the boundary (None = the model's default). The
    messages call them by ``names`` (default :data:`SETTING_NAMES`; the CLI passes
    :data:`SETTING_OPTIONS`).

    Guidance is bounded to 0..50: classifier-free guidance past a few tens only amplifies the
    difference of two predictions (huge values overflow to a black result)."""
    max_guidance = 50.0
    n = SETTING_NAMES | (names or {})
    if steps is not None and (not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= 1000):
        raise InputError(f"{n['steps']} must be an integer in 1..1000, got {steps!r}")
    if guidance is not None:
        ok = not isinstance(guidance, bool) and isinstance(guidance, (int, float, np.integer, np.floating))
        if ok:
            try:
                value = float(guidance)
            except OverflowError:  # an int past float's range
                ok = False
            else:
                ok = math.isfinite(value) and 0.0 <= value <= max_guidance
        if not ok:
            raise InputError(f"{n['guidance']} must be a finite number in 0..{max_guidance:g}, got {guidance!r}")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or not 1 <= samples <= 64):
        raise InputError(f"{n['samples']} must be an integer in 1..64, got {samples!r}")


def check_detect_settings(method: str, threshold: float | None, name: str = "threshold") -> None:
    """A detection's method and threshold (None: the method's default), one InputError each: the
    ``learned`` method's threshold is a probability (strictly between 0 and 1: at 1 or above
    nothing could be proposed, at 0 everything), the ``colour`` method's a positive number of MADs.
    ``name``: what the messages call the threshold (the CLI's ``--threshold``)."""
    if method not in DETECT_METHODS:
        raise InputError(f"method must be {' or '.join(repr(m) for m in DETECT_METHODS)}, got {method!r}")
    if threshold is None:
        return
    ok = not isinstance(threshold, bool) and isinstance(threshold, (int, float, np.integer, np.floating)) and math.isfinite(float(threshold))
    if method == "learned" and not (ok and 0.0 < float(threshold) < 1.0):
        raise InputError(f"{name} for the learned method is a probability strictly between 0 and 1 (default 0.8), got {threshold!r}")
    if method == "colour" and not (ok and float(threshold) > 0.0):
        raise InputError(f"{name} for the colour method is a positive number of MADs above the median (default 6), got {threshold!r}")


def check_input_sizes(sizes: dict[str, tuple[int, int]], names: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> None:
    """The checks of :func:`validate_inputs` that need only the images' sizes (``role -> (w, h)`` as
    read from the headers), so that a wrong mask is refused before any pixel is decoded. Sizes are
    compared either way round (an EXIF rotation may still swap them); the exact comparison follows
    once the images are decoded."""
    names, labels = names or {}, labels or {}

    def name(role: str) -> str:
        return f"{labels.get(role, role)} '{names[role]}'" if role in names else labels.get(role, role)

    for role in ("image", "reference"):
        if role in sizes and min(sizes[role]) < 8:
            w, h = sizes[role]
            raise InputError(f"{name(role)}: {w}x{h} is too small (need at least 8x8)")
    for role, of in (("mask", "image"), ("reference_mask", "reference")):
        if role in sizes and of in sizes and sorted(sizes[role]) != sorted(sizes[of]):
            (w, h), (ow, oh) = sizes[role], sizes[of]
            what = "the image" if of == "image" else "the reference"
            raise InputError(f"{name(role)}: size {w}x{h} does not match {what} {ow}x{oh}")


def load_inputs(
    files: dict,
    *,
    labels: dict[str, str] | None = None,
    max_side: int | None = None,
    too_large: type[InputError] = InputError,
    before_decode: Callable[[], object] | None = None,
) -> tuple:
    """Read and check a call's inputs: ``files`` maps ``image``, ``mask``, ``reference`` and
    optionally ``reference_mask`` to a path or to ``(bytes, file name)``; ``reference`` (and then
    ``reference_mask``, None where a reference has none) may be lists (``list``, as a tuple is one
    file's bytes and name), for several references.

    Every header is read and the sizes compared (:func:`check_input_sizes`) before any pixel is
    decoded; ``before_decode`` is then called (the server reserves its queue slot there), the images
    are decoded and :func:`validate_inputs` runs. Returns (image, mask, reference, reference mask or
    the reference's alpha or None, names: role -> file name); with a list of references, the
    references and their masks are lists, and so are ``names["reference"]`` and
    ``names["reference_mask"]``. ``labels`` renames a role in messages about reading its file
    (e.g. ``reference mask``); the second reference is called ``reference #2``, and so on."""
    labels = labels or {}
    missing = [role for role in INPUT_ROLES[:3] if role not in files or files[role] is None]
    if missing:
        raise InputError(f"missing input(s): {', '.join(missing)}")
    several = isinstance(files["reference"], list)  # (a tuple is one file's (bytes, name))
    pairs = _reference_pairs(files, several)
    roles = {r: (files[r], labels.get(r, r)) for r in ("image", "mask")}  # key -> (source, label in messages)
    for i, (ref, rm) in enumerate(pairs):
        roles[_key("reference", i)] = (ref, f"reference #{i + 1}" if i else labels.get("reference", "reference"))
        if rm is not None:
            roles[_key("reference_mask", i)] = (rm, f"reference #{i + 1} mask" if i else labels.get("reference_mask", "reference_mask"))
    data, names = {}, {}
    for key, (source, label) in roles.items():
        data[key], names[key] = (source[0], str(source[1])) if isinstance(source, tuple) else (read_file(source, label), str(source))
    sizes = {k: open_image(data[k], roles[k][1], names[k], max_side=max_side, too_large=too_large).size for k in data}
    for i in range(len(pairs)):
        check_input_sizes(*_pair_view(i, sizes, names))
    if before_decode is not None:
        before_decode()
    decoded = {k: decode_image(data.pop(k), roles[k][1], names[k], max_side=max_side, too_large=too_large) for k in list(data)}
    check_mask_picture(decoded["mask"], f"{roles['mask'][1]} '{names['mask']}'")
    image, mask = decoded["image"], to_mask(decoded["mask"])
    if not mask.any() and _has_alpha(decoded["mask"]) and np.asarray(decoded["mask"].getchannel("A")).min() < 255:
        # (marks drawn in black or another dark colour on a transparent layer, as paint programs save them)
        raise InputError(
            f"{roles['mask'][1]} '{names['mask']}': mask is empty: a mask with transparency is read as its colour over black, "
            "and its marks are dark or transparent; draw the artifact in white (on black or transparent)"
        )
    references, ref_masks = [], []
    for i in range(len(pairs)):
        reference = decoded[_key("reference", i)]
        rm = decoded.get(_key("reference_mask", i))
        ref_masks.append(to_mask(rm) if rm is not None else alpha_mask(reference))
        references.append(reference)
        _, pair_names, pair_labels = _pair_view(i, sizes, names)
        validate_inputs(to_rgb(image), mask, to_rgb(reference), ref_masks[-1], pair_names, pair_labels)
    if not several:
        return image, mask, references[0], ref_masks[0], names
    names_out = {
        "image": names["image"], "mask": names["mask"],
        "reference": [names[_key("reference", i)] for i in range(len(pairs))],
        "reference_mask": [names.get(_key("reference_mask", i)) for i in range(len(pairs))],
    }
    return image, mask, references, ref_masks, names_out


def _key(role: str, i: int) -> str:
    """The internal key of reference ``i``'s role: the plain role for the first, ``role #k`` after."""
    return role if i == 0 else f"{role} #{i + 1}"


def _reference_pairs(files: dict, several: bool) -> list[tuple]:
    """(reference, reference mask or None) per reference of :func:`load_inputs`' ``files``."""
    refs = list(files["reference"]) if several else [files["reference"]]
    rmasks = files.get("reference_mask")
    rmasks = list(rmasks) if isinstance(rmasks, list) else [rmasks] + [None] * (len(refs) - 1)
    if not refs:
        raise InputError("missing input(s): reference")
    if len(rmasks) != len(refs):
        raise InputError(f"{len(rmasks)} reference masks for {len(refs)} references: give one per reference")
    return list(zip(refs, rmasks))


def _pair_view(i: int, values: dict, names: dict) -> tuple[dict, dict, dict]:
    """The image, the mask and reference ``i`` (with its mask) under the plain role names, as
    :func:`check_input_sizes` and :func:`validate_inputs` take them: (values, names, labels)."""
    roles = ("image", "mask", "reference", "reference_mask")
    keys = {r: (r if r in ("image", "mask") else _key(r, i)) for r in roles}
    picked = {r: values[k] for r, k in keys.items() if k in values}
    picked_names = {r: names[k] for r, k in keys.items() if k in names}
    labels = {"reference": f"reference #{i + 1}", "reference_mask": f"reference #{i + 1} mask"} if i else {}
    return picked, picked_names, labels


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when the two paths name the same file: the same resolved path (symlinks, ``..``), or,
    where both exist, the same inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _writable_folder(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder`` (or in the folder that would hold it once created),
    or None when it can. Side-effect free apart from a probe file, created and removed at once."""
    existing = folder
    while not existing.exists():  # the nearest folder that exists: the rest would be created
        if existing.is_symlink():
            return f"'{existing}' is a broken symbolic link"
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"'{existing}' is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"folder '{existing}' is not writable"
    try:
        with tempfile.NamedTemporaryFile(prefix=".rba-probe-", dir=existing):
            pass
    except OSError as e:
        return f"folder '{existing}' is not writable (creating a file there fails: {e.strerror or e})"
    return None


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, an output file that could not be written: an existing folder or
    special file under that name, a parent that is a file, a folder that is not writable (or a
    pseudo file system such as /proc and /sys). Returns the path."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} '{path}': is a folder")
    if p.exists() and not p.is_file():
        raise InputError(f"{what} '{path}': exists and is not a regular file (a device or pipe?); refusing to replace it")
    problem = _writable_folder(Path(os.path.abspath(p)).parent)
    if problem:
        raise InputError(f"{what} '{path}': cannot be written: {problem}")
    return p


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse, before any work, an output folder that is a file or cannot be created or written to."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{what} '{path}': exists and is not a folder")
    problem = _writable_folder(Path(os.path.abspath(p)))
    if problem:
        raise InputError(f"{what} '{path}': cannot be written: {problem}")
    return p


def check_output_apart(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], what: str = "--output") -> None:
    """Refuse, before any work, an output folder that is one of the input folders (``inputs``:
    how messages call each -> its path, None skipped) or lies inside one: results written there
    would overwrite the inputs (a case's true correspondence replaced by the prediction) or be
    read back as inputs later. Symbolic links are followed."""
    out = Path(os.path.abspath(output)).resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        src = Path(os.path.abspath(path)).resolve()
        if out == src:
            raise InputError(f"{what} '{output}' is the {name} folder: its files would be overwritten; give another folder")
        if src in out.parents:
            raise InputError(f"{what} '{output}' is inside the {name} folder '{path}': results would be mixed with its files; give a folder outside it")


def _umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux), else by
    setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def write_atomic(
    path: str | os.PathLike,
    data_or_writer: bytes | str | Callable[[BinaryIO], object],
    *,
    fsync: bool = False,
    mode: int | None = None,
    prefix: str | None = None,
    suffix: str = ".tmp",
) -> Path:
    """Write ``path`` so that its name only ever holds a complete file: the bytes (a ``str`` is
    written as UTF-8, a callable is given the open binary file to write into) go to a temporary file
    created exclusively in the same folder (``tempfile.mkstemp``: a name nobody can predict, and
    nothing already there, a planted symbolic link included, is opened or followed), which is then
    renamed over ``path``. ``fsync`` flushes it to the disk before the rename. The file gets ``mode``,
    by default the one a plain ``open(path, "w")`` would give (0644 under the usual umask 022).
    The temporary file is ``<prefix>XXXXXXXX<suffix>``, ``prefix`` by default ``.<name>.``; it is
    removed if anything fails. Creates the folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}." if prefix is None else prefix, suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data_or_writer):
                data_or_writer(f)
            else:
                f.write(data_or_writer.encode("utf-8") if isinstance(data_or_writer, str) else data_or_writer)
            os.fchmod(f.fileno(), (0o666 & ~_umask()) if mode is None else mode)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


#: How each output format is written (Pillow's save options). A refined picture keeps every pixel
#: outside the mask as it was where the format allows it: PNG, TIFF and BMP are lossless as they
#: are, WebP is written lossless (Pillow's default is lossy at quality 80: 29.2 dB over the badge
#: example's image). JPEG cannot be: it is written at quality 95 without chroma subsampling (37.1
#: dB over the badge's image, where Pillow's default, quality 75 with 4:2:0, gave 28.5 dB, about
#: the repair's own error on its letters).
SAVE_OPTIONS: dict[str, dict] = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"lossless": True}}
#: Formats refused for outputs: a GIF holds at most 256 colours (the picture would be quantised).
REFUSED_OUTPUT_FORMATS = {"GIF": "a GIF holds at most 256 colours and the picture would be quantised"}


def output_format(path: str | os.PathLike, what: str = "output") -> str:
    """Pillow's format name for an output ``path`` by its extension; one InputError naming
    ``what`` for an unknown extension or a refused format (:data:`REFUSED_OUTPUT_FORMATS`)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"{what} '{path}': unknown image extension '{path.suffix}' (use .png, .tif, .webp or .bmp, which keep every "
            "pixel outside the mask, or .jpg)"
        )
    if fmt in REFUSED_OUTPUT_FORMATS:
        raise InputError(f"{what} '{path}': {REFUSED_OUTPUT_FORMATS[fmt]}; use .png")
    return fmt


#: Output formats that hold an alpha channel (the others dropped a refined RGBA or LA picture's
#: alpha without a word: JPEG, BMP, PPM ...).
ALPHA_OUTPUT_FORMATS = frozenset({"PNG", "TIFF", "WEBP"})


def output_mode(original: Image.Image) -> str:
    """The mode the refined picture of ``original`` comes back in (:func:`in_input_mode`): RGBA
    or LA for a picture with an alpha channel, L for a grey one, RGB otherwise (also for checking
    an output's format before the work: :func:`check_output_holds`)."""
    grey = original.mode in _GREY_MODES
    if _has_alpha(original):
        return "LA" if grey else "RGBA"
    return "L" if grey else "RGB"


def check_output_holds(path: str | os.PathLike, original: Image.Image, what: str = "output") -> None:
    """Before the work: one InputError naming ``what`` where ``path``'s format cannot hold the
    refined picture of ``original`` (its alpha channel in a JPEG, ...)."""
    encode_image(Image.new(output_mode(original), (8, 8)), path, what)


def save_image(img: Image.Image, f, fmt: str) -> None:
    """``img.save(f, format=fmt)`` with the format's :data:`SAVE_OPTIONS` (a JPEG gets RGB). A
    picture with an alpha channel is refused (InputError) in a format that cannot hold it
    (:data:`ALPHA_OUTPUT_FORMATS`)."""
    if _has_alpha(img) and fmt not in ALPHA_OUTPUT_FORMATS:
        raise InputError(f"the picture has an alpha channel (transparency), which {fmt} cannot hold; use .png, .tif or .webp")
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    img.save(f, format=fmt, **SAVE_OPTIONS.get(fmt, {}))


def save_image_atomic(img: Image.Image, path: str | os.PathLike) -> None:
    """Write via a temporary file in the same folder, then rename: no half-written outputs."""
    path = Path(path)
    fmt = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: save_image(img, f, fmt))


def encode_image(img: Image.Image, path: str | os.PathLike, what: str = "output") -> bytes:
    """The bytes of ``img`` in the format ``path``'s extension names (a JPEG gets RGB); an unknown
    extension or a format that cannot hold the image is one InputError naming ``what``."""
    path = Path(path)
    fmt = output_format(path, what)
    buf = BytesIO()
    try:
        save_image(img, buf, fmt)
    except InputError as e:
        raise InputError(f"{what} '{path}': {e}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{what} '{path}': the image cannot be written as {fmt} ({_one_line(e)}); use .png") from None
    return buf.getvalue()


def save_images_atomic(items: list[tuple[Image.Image, str | os.PathLike, str]]) -> list[Path]:
    """Write several images, ``(image, path, what)`` each, so that either all of them are written or
    none is: every image is encoded first, then each goes to a temporary file created exclusively
    in its folder; only when all are complete are they renamed into place. Any failure before the
    renames removes the temporary files and leaves every output as it was (one InputError naming
    the output). Returns the paths."""
    encoded = [(Path(path), encode_image(img, path, what), what) for img, path, what in items]
    staged: list[str] = []
    try:
        for path, data, what in encoded:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                staged.append(tmp)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    os.fchmod(f.fileno(), 0o666 & ~_umask())
            except OSError as e:
                raise InputError(f"{what} '{path}': cannot be written ({e.strerror or _one_line(e)}); no output was written") from None
        for (path, _, _), tmp in zip(encoded, staged):
            os.replace(tmp, path)
        staged.clear()
    finally:
        for tmp in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return [path for path, _, _ in encoded]
