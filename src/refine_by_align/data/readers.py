"""Readers for photo folders with object masks.

* :class:`MultiViewFolder`: ``ROOT/SUBJECT/NN.jpg`` + ``ROOT/SUBJECT/NN_mask.png`` (the layout of
  ``shared/data/dreambooth-train``): several photos of one object in different contexts and poses,
  the role MVObj plays in the paper (Sec. 3.4, App. A.8). Each photo with its mask is also a single
  "object image with object mask", the role Pixabay plays.
* :class:`ImageMaskFolder`: a flat folder of ``X.png|jpg`` + ``X_mask.png``.

Masks are soft (0-255) and thresholded at 128. Photos are loaded lazily, optionally downscaled so
their longest side is ``max_side`` (for fast training-pair construction), and cached in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from refine_by_align.io import InputError, load_image, to_mask, to_rgb

__all__ = [
    "VALIDATION_SUBJECTS",
    "DatasetError",
    "ImageMaskFolder",
    "MultiViewFolder",
    "default_data_root",
    "resolve_data_root",
    "load_photo",
]

# Subjects held out of training and used to build validation cases (make_cases).
VALIDATION_SUBJECTS = ("backpack", "candle", "dog6", "robot_toy")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MASK_SUFFIX = "_mask"


class DatasetError(InputError):
    """A data folder that cannot be used (missing, empty, malformed); one-line message."""


_REPO_ROOT = Path(__file__).resolve().parents[3]  # (where the shared folder's relative paths start)


def default_data_root() -> Path | None:
    """The multi-view photo folder, if present: ``$REFINE_BY_ALIGN_DATA`` or, relative to the
    repository root, ``../shared/data/dreambooth-train``. ``None`` when neither exists."""
    env = os.environ.get("REFINE_BY_ALIGN_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    p = (_REPO_ROOT / ".." / "shared" / "data" / "dreambooth-train").resolve()
    return p if p.is_dir() else None


def resolve_data_root(path: str | os.PathLike | None) -> Path | None:
    """A photo folder as a command or recipe names it: None -> :func:`default_data_root`; a
    relative path that is not found from the current folder but is from the repository root (the
    recipes' and options' ``../shared/data/dreambooth-train`` is written from there) -> that one;
    otherwise the path as given (the caller says it is not found)."""
    if path is None:
        return default_data_root()
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    from_repo = (_REPO_ROOT / p).resolve()
    return from_repo if from_repo.exists() else p


def _downscale(image: np.ndarray, mask: np.ndarray, max_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    h, w = mask.shape
    if max_side is None or max(h, w) <= max_side:
        return image, mask
    f = max_side / max(h, w)
    size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask.astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA) >= 128
    return image, mask


def load_photo(image_path: Path, mask_path: Path, max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One photo and its mask: ((H, W, 3) uint8 RGB, (H, W) bool, soft mask thresholded at 128),
    downscaled to ``max_side`` on the longest side if given."""
    image = np.asarray(to_rgb(load_image(image_path, "image")))
    mask = to_mask(load_image(mask_path, "mask"))
    if mask.shape != image.shape[:2]:
        raise DatasetError(
            f"mask '{mask_path}': size {mask.shape[1]}x{mask.shape[0]} does not match the image "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    return _downscale(image, mask, max_side)


def _pairs_in(folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths in a folder: every X.ext with a matching X_mask.png (or other ext)."""
    out = []
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    for name in sorted(files):
        p = files[name]
        if p.suffix.lower() not in IMAGE_EXTS or p.stem.endswith(MASK_SUFFIX) or p.name.startswith("."):
            continue
        for ext in (".png", p.suffix, ".jpg"):
            m = files.get(p.stem + MASK_SUFFIX + ext)
            if m is not None:
                out.append((p, m))
                break
    return out


class _PhotoCache:
    """Lazily loaded, cached photos."""

    def __init__(self, items: list[tuple[Path, Path]], max_side: int | None, min_object_pixels: int):
        self.items = items
        self.max_side = max_side
        self.min_object_pixels = min_object_pixels
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self._cache:
            self._cache[k] = load_photo(*self.items[k], max_side=self.max_side)
        return self._cache[k]

    def usable(self, k: int) -> bool:
        return int(self.get(k)[1].sum()) >= self.min_object_pixels


class MultiViewFolder:
    """Per-subject photos with object masks: ``ROOT/SUBJECT/NN.jpg + NN_mask.png``.

    Args:
        root: the folder of subject folders.
        subjects: subject names to use (default: every sub-folder with at least one photo+mask).
        exclude: names removed from the selection (default: :data:`VALIDATION_SUBJECTS`, held out
            of training); pass ``()`` to keep them (validation-case building).
        max_side: downscale photos so their longest side is at most this (None: keep).
        min_object_pixels: views whose mask has fewer pixels are skipped when sampling.
    """

    name = "multiview"

    def __init__(
        self,
        root: str | os.PathLike,
        subjects: list[str] | tuple[str, ...] | None = None,
        exclude: tuple[str, ...] | list[str] = VALIDATION_SUBJECTS,
        max_side: int | None = None,
        min_object_pixels: int = 64,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"multi-view folder '{self.root}': not found (expected ROOT/SUBJECT/NN.jpg + NN_mask.png)")
        if subjects is None:
            names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        else:
            missing = [s for s in subjects if not (self.root / s).is_dir()]
            if missing:
                raise DatasetError(f"multi-view folder '{self.root}': no subject folder(s) {', '.join(missing)}")
            names = list(subjects)
        names = [s for s in names if s not in set(exclude)]
        self.subjects: list[str] = []
        self._views: dict[str, _PhotoCache] = {}
        for s in names:
            items = _pairs_in(self.root / s)
            if items:
                self.subjects.append(s)
                self._views[s] = _PhotoCache(items, max_side, min_object_pixels)
            elif subjects is not None:
                raise DatasetError(f"subject folder '{self.root / s}': no image with a matching X_mask.png")
        if not self.subjects:
            raise DatasetError(
                f"multi-view folder '{self.root}': no usable subject (need SUBJECT/NN.jpg + SUBJECT/NN_mask.png"
                + (f"; excluded: {', '.join(exclude)}" if exclude else "")
                + ")"
            )
        self.max_side = max_side
        # flat index of (subject, view) for single-image sampling
        self._flat = [(s, k) for s in self.subjects for k in range(len(self._views[s].items))]

    def __len__(self) -> int:
        """Number of photos (all subjects)."""
        return len(self._flat)

    def n_views(self, subject: str) -> int:
        return len(self._views[subject].items)

    def paths(self, subject: str) -> list[tuple[Path, Path]]:
        """(image path, mask path) of each view of ``subject``."""
        return list(self._views[subject].items)

    def view(self, subject: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """View k of ``subject``: ((H, W, 3) uint8, (H, W) bool), loaded once then cached."""
        return self._views[subject].get(k)

    def views(self, subject: str) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.view(subject, k) for k in range(self.n_views(subject))]

    def preload(self) -> MultiViewFolder:
        """Load (and downscale) every photo now, e.g. before forking DataLoader workers."""
        for s, k in self._flat:
            self.view(s, k)
        return self

    def sample_single(self, rng: np.random.Generator, tries: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """A random photo with a usable object mask."""
        for _ in range(tries):
            s, k = self._flat[int(rng.integers(len(self._flat)))]
            if self._views[s].usable(k):
                return self.view(s, k)
        raise DatasetError(f"multi-view folder '{self.root}': no photo with a usable object mask found")

    @property
    def pair_subjects(self) -> list[str]:
        """Subjects with at least two views."""
        return [s for s in self.subjects if self.n_views(s) >= 2]

    def sample_pair(self, rng: np.random.Generator, tries: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Two different views of one random subject: (img1, mask1, img2, mask2)."""
        s, i, j = self.sample_pair_ids(rng, tries)
        return (*self.view(s, i), *self.view(s, j))

    def sample_pair_ids(self, rng: np.random.Generator, tries: int = 20) -> tuple[str, int, int]:
        """Which views :meth:`sample_pair` draws with the same ``rng`` state: (subject, i, j)."""
        subs = self.pair_subjects
        if not subs:
            raise DatasetError(f"multi-view folder '{self.root}': no subject has two or more views")
        for _ in range(tries):
            s = subs[int(rng.integers(len(subs)))]
            i, j = (int(v) for v in rng.choice(self.n_views(s), size=2, replace=False))
            c = self._views[s]
            if c.usable(i) and c.usable(j):
                return s, i, j
        raise DatasetError(f"multi-view folder '{self.root}': no pair of views with usable object masks found")


class ImageMaskFolder:
    """A flat folder of ``X.png|jpg`` + ``X_mask.png`` object photos (single images only)."""

    name = "imagemask"

    def __init__(self, root: str | os.PathLike, max_side: int | None = None, min_object_pixels: int = 64):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"image folder '{self.root}': not found (expected X.png|jpg + X_mask.png)")
        items = _pairs_in(self.root)
        if not items:
            raise DatasetError(f"image folder '{self.root}': no image with a matching X_mask.png")
        self._cache = _PhotoCache(items, max_side, min_object_pixels)
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self._cache.items)

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """((H, W, 3) uint8, (H, W) bool)."""
        return self._cache.get(k)

    def paths(self) -> list[tuple[Path, Path]]:
        return list(self._cache.items)

    def preload(self) -> ImageMaskFolder:
        for k in range(len(self)):
            self._cache.get(k)
        return self

    def sample_single(self, rng: np.random.Generator, tries: int = 20) -> tuple[np.ndarray, np.ndarray]:
        for _ in range(tries):
            k = int(rng.integers(len(self)))
            if self._cache.usable(k):
                return self._cache.get(k)
        raise DatasetError(f"image folder '{self.root}': no image with a usable object mask found")
