"""Loading and validating user images, masks and references.

Every problem with a user-supplied file ends in one :class:`InputError` whose message names the
file and the problem, so the CLI can print one line and exit with code 2.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "InputError",
    "load_image",
    "load_mask",
    "to_rgb",
    "to_mask",
    "alpha_mask",
    "validate_inputs",
    "save_image_atomic",
    "write_atomic",
    "same_file",
    "check_output_path",
    "check_output_folder",
]

# Largest accepted image (pixels). Pillow's own bomb check fires at twice its MAX_IMAGE_PIXELS.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class InputError(ValueError):
    """A user input that cannot be used; the message is meant for the user, one line."""


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} '{path}': file not found")
    if path.is_dir():
        raise InputError(f"{what} '{path}': is a folder, not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as fh:
                img = Image.open(fh)
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{what} '{path}': image too large (decompression bomb guard: {e})") from None
    except UnidentifiedImageError:
        raise InputError(f"{what} '{path}': not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{what} '{path}': cannot be decoded ({e})") from None
    if img.width < 1 or img.height < 1:
        raise InputError(f"{what} '{path}': image has zero size")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not stop us: keep the pixels as stored
        pass
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (RGBA, L, P, I;16, CMYK, ...) -> 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def alpha_mask(img: Image.Image) -> np.ndarray | None:
    """The alpha channel as a boolean object mask, or None if the image has no useful alpha."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha >= 128
    return None


def to_mask(img: Image.Image) -> np.ndarray:
    """Any single-channel or colour image -> boolean mask: nonzero / bright = True.

    Grey levels are thresholded at half range, so antialiased brush strokes count as drawn."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA")).astype(np.float32)
        grey = rgba[..., :3].max(axis=-1) * (rgba[..., 3] / 255.0)
        return grey >= 128
    if img.mode == "1":
        return np.asarray(img, dtype=bool)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        return arr >= (32768 if arr.max() > 255 else 128)
    arr = np.asarray(img.convert("RGB")).max(axis=-1)
    return arr >= 128


def load_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open an image file of any mode and size; returns the decoded PIL image (EXIF-rotated)."""
    return _open(path, what)


def load_mask(path: str | os.PathLike, what: str = "mask") -> np.ndarray:
    return to_mask(_open(path, what))


def validate_inputs(
    image: Image.Image,
    mask: np.ndarray,
    reference: Image.Image,
    reference_mask: np.ndarray | None = None,
    names: dict[str, str] | None = None,
) -> None:
    """Raise InputError for inputs no method can work with. ``names`` maps role -> file name."""
    names = names or {}

    def name(role: str) -> str:
        return f"{role} '{names[role]}'" if role in names else role

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
        raise InputError(f"{name('mask')}: mask is empty (no bright pixels mark an artifact)")
    if mask.all():
        raise InputError(f"{name('mask')}: mask covers the whole image; nothing is left to align with")
    if reference_mask is not None:
        if reference_mask.shape != (reference.height, reference.width):
            raise InputError(
                f"{name('reference_mask')}: size {reference_mask.shape[1]}x{reference_mask.shape[0]} "
                f"does not match the reference {reference.width}x{reference.height}"
            )
        if not reference_mask.any():
            if "reference_mask" in names or not names:
                raise InputError(f"{name('reference_mask')}: reference mask is empty (no object)")
            # no mask file was given: the mask came from the reference's alpha channel
            raise InputError(
                f"{name('reference')}: its alpha channel is empty (fully transparent: no object to align with); "
                "give a reference mask or a reference whose object is opaque"
            )


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


def save_image_atomic(img: Image.Image, path: str | os.PathLike) -> None:
    """Write via a temporary file in the same folder, then rename: no half-written outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"output '{path}': unknown image extension '{path.suffix}' (use .png or .jpg)")
    write_atomic(path, lambda f: img.save(f, format=fmt))
