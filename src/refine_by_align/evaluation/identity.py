"""Identity metrics of Sec. 4.1: CLIP-I, DINO-I and CLIP-T (cosine similarity x 100).

* **CLIP-I** / **DINO-I**: cosine x 100 between the image embeddings of the *refined region* (the
  output cropped to the artifact mask's box, grown a little) and the *corresponding region of the
  reference* (the reference cropped to the box of the true region M* when the case has one,
  else of the method's predicted one, else of the whole reference object). CLIP embeddings are
  ``CLIPModel.get_image_features``; DINO embeddings are the DINOv2 CLS token after the final layer
  norm (``Dinov2Model(...).pooler_output``).
* **CLIP-T**: cosine x 100 between the CLIP embedding of the whole refined image and the CLIP text
  embedding of the case's caption (the paper captions with BLIP-2; here captions come from a file or
  ``meta.json``'s ``caption``).

Every embedder follows one contract (:class:`ImageFeatureExtractor`): it takes a PIL image, a list of
PIL images, or a (B, 3, H, W) / (3, H, W) tensor in [0, 1] of any size; resizing (shortest edge,
bicubic, antialiased), centre crop and mean/std normalisation happen inside, with the sizes and
statistics of the model's image processor (``preprocessor_config.json``) or, when the folder has
none, the processor defaults of that model family at the config's ``image_size``. This is the same
input contract as :class:`refine_by_align.models.reference_encoder.ReferenceEncoder`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..io import InputError
from ..zoom import Box, mask_bbox
from .metrics import grown_box

__all__ = [
    "ImageFeatureExtractor",
    "HFImageEmbedder",
    "CLIPEmbedder",
    "DinoEmbedder",
    "cosine_score",
    "identity_score",
    "region_crop",
    "identity_crops",
    "load_captions",
    "IdentityScorer",
    "IDENTITY_KEYS",
]

logger = logging.getLogger(__name__)

#: The per-case / per-summary keys this module fills (None when not computed).
IDENTITY_KEYS = ("clip_t", "clip_i", "dino_i")

#: The refined / reference regions are the boxes grown by this fraction of their longer side ...
IDENTITY_GROW = 0.1
#: ... and at least this many pixels per side.
IDENTITY_MIN_GROW = 4

ImagesLike = Any  # PIL.Image | Sequence[PIL.Image] | torch.Tensor | Sequence[torch.Tensor]


@runtime_checkable
class ImageFeatureExtractor(Protocol):
    """The one feature-extractor contract of the evaluation.

    ``embed_images(images)`` takes a PIL image, a list of PIL images, or a (B, 3, H, W) / (3, H, W)
    float tensor in [0, 1] (any H, W) and returns (B, D) float32 embeddings; the resizing and the
    normalisation are the extractor's business."""

    name: str

    def embed_images(self, images: ImagesLike) -> torch.Tensor: ...


def _to_tensors(images: ImagesLike) -> list[torch.Tensor]:
    """Any accepted image input -> list of (3, H, W) float32 tensors in [0, 1]."""
    if isinstance(images, (Image.Image, torch.Tensor, np.ndarray)):
        images = [images] if not (isinstance(images, torch.Tensor) and images.ndim == 4) else list(images)
    out = []
    for im in images:
        if isinstance(im, Image.Image):
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            t = torch.from_numpy(arr).permute(2, 0, 1)
        elif isinstance(im, np.ndarray):
            if im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f"numpy images must be (H, W, 3), got {im.shape}")
            arr = im.astype(np.float32) / (255.0 if im.dtype == np.uint8 else 1.0)
            t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        elif isinstance(im, torch.Tensor):
            t = im
            if t.ndim == 4 and t.shape[0] == 1:
                t = t[0]
            if t.ndim != 3 or t.shape[0] != 3:
                raise ValueError(f"image tensors must be (B, 3, H, W) or (3, H, W), got {tuple(im.shape)}")
            t = t.detach().float().cpu()
        else:
            raise TypeError(f"unsupported image type {type(im).__name__}")
        if t.shape[1] < 1 or t.shape[2] < 1:
            raise ValueError("empty image")
        out.append(t)
    if not out:
        raise ValueError("no images given")
    return out


def _size_value(size: Any, key_pref: Sequence[str]) -> int | None:
    if size is None:
        return None
    if isinstance(size, (int, float)):
        return int(size)
    for k in key_pref:
        v = size.get(k) if isinstance(size, Mapping) else getattr(size, k, None)
        if v:
            return int(v)
    return None


class HFImageEmbedder:
    """Shared preprocessing of :class:`ImageFeatureExtractor` implementations built on transformers.

    ``resize_to``: the shortest edge after resizing; ``crop_to``: the square centre crop side;
    ``mean``/``std``: the per-channel normalisation."""

    name = "image"

    def __init__(self, resize_to: int, crop_to: int, mean: Sequence[float], std: Sequence[float]):
        self.resize_to = int(resize_to)
        self.crop_to = int(crop_to)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)

    @staticmethod
    def _processor_settings(path: str, default_mean, default_std, default_resize: int, default_crop: int) -> tuple[int, int, list, list]:
        """(resize_to, crop_to, mean, std) from the model's ``preprocessor_config.json`` when it has
        one, else the family defaults."""
        from transformers.image_processing_base import ImageProcessingMixin

        try:
            d, _ = ImageProcessingMixin.get_image_processor_dict(str(path))
        except (OSError, ValueError):
            d = {}
        mean = d.get("image_mean") or default_mean
        std = d.get("image_std") or default_std
        crop = _size_value(d.get("crop_size"), ("height", "shortest_edge", "width")) if d.get("do_center_crop", True) else None
        resize = _size_value(d.get("size"), ("shortest_edge", "height", "width"))
        crop = crop or (resize if d else None) or default_crop
        resize = resize or default_resize
        return resize, crop, list(mean), list(std)

    def preprocess(self, images: ImagesLike) -> torch.Tensor:
        """-> normalised (B, 3, crop, crop): shortest edge to ``resize_to`` (bicubic, antialiased),
        centre crop ``crop_to``, then (x - mean) / std."""
        batch = []
        for t in _to_tensors(images):
            t = t[None].clamp(0.0, 1.0)
            h, w = t.shape[-2:]
            s = self.resize_to / min(h, w)
            nh, nw = max(self.crop_to, round(h * s)), max(self.crop_to, round(w * s))
            if (nh, nw) != (h, w):
                t = F.interpolate(t, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
            y0, x0 = (nh - self.crop_to) // 2, (nw - self.crop_to) // 2
            batch.append(t[..., y0 : y0 + self.crop_to, x0 : x0 + self.crop_to])
        x = torch.cat(batch)
        return (x - self.mean) / self.std

    def _forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def embed_images(self, images: ImagesLike) -> torch.Tensor:
        x = self.preprocess(images)
        return self._forward(x).float()

    __call__ = embed_images


def _pooled(out: Any) -> torch.Tensor:
    """transformers 4 returns a tensor from ``get_*_features``, 5 an output whose pooler is projected."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _load(cls, path: str | os.PathLike, what: str):
    try:
        model = cls.from_pretrained(str(path), use_safetensors=True)
    except (OSError, ValueError) as e:
        raise InputError(f"{what} model '{path}': cannot load ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return model.eval()


class CLIPEmbedder(HFImageEmbedder):
    """CLIP image (``get_image_features``) and text (``get_text_features``) embeddings.

    ``path``: a local folder or hub id holding a transformers ``CLIPModel`` in safetensors (and, for
    CLIP-T, its tokenizer)."""

    name = "clip"

    def __init__(self, path: str | os.PathLike, model: Any | None = None, tokenizer: Any | None = None):
        from transformers import CLIPModel
        from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        self.path = str(path)
        self.model = model if model is not None else _load(CLIPModel, path, "CLIP")
        side = int(self.model.config.vision_config.image_size)
        super().__init__(*self._processor_settings(self.path, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, side, side))
        self._tokenizer = tokenizer
        self._tokenizer_error: str | None = None

    @property
    def tokenizer(self):
        if self._tokenizer is None and self._tokenizer_error is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.path)
            except (OSError, ValueError, TypeError) as e:
                self._tokenizer_error = str(e).splitlines()[0] if str(e) else type(e).__name__
                logger.warning("CLIP model '%s' has no usable tokenizer (%s): CLIP-T is not computed", self.path, self._tokenizer_error)
        return self._tokenizer

    def _forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixel_values))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(B,) captions -> (B, D) text embeddings (truncated to the model's context length)."""
        tok = self.tokenizer
        if tok is None:
            raise RuntimeError(f"CLIP model '{self.path}' has no tokenizer: {self._tokenizer_error}")
        max_len = int(self.model.config.text_config.max_position_embeddings)
        enc = tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return _pooled(self.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc.get("attention_mask"))).float()


class DinoEmbedder(HFImageEmbedder):
    """DINOv2 image embedding: the CLS token after the final layer norm (``pooler_output``).

    ``path``: a local folder or hub id holding a transformers ``Dinov2Model`` in safetensors."""

    name = "dino"

    def __init__(self, path: str | os.PathLike, model: Any | None = None):
        from transformers import Dinov2Model
        from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        self.path = str(path)
        self.model = model if model is not None else _load(Dinov2Model, path, "DINOv2")
        side = int(self.model.config.image_size)
        # facebook/dinov2-*: resize the shortest edge to 256, centre crop 224
        super().__init__(*self._processor_settings(self.path, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, round(side * 256 / 224), side))

    def _forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).pooler_output


# ----------------------------------------------------------------------------------------- scores


def cosine_score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity x 100 of two (B, D) (or (D,)) embeddings, in [-100, 100]."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return (100.0 * F.cosine_similarity(a, b, dim=-1, eps=1e-12)).clamp(-100.0, 100.0)


def identity_score(extractor: ImageFeatureExtractor, a: ImagesLike, b: ImagesLike) -> float:
    """Cosine x 100 between the embeddings of one image ``a`` and one image ``b``."""
    ea = extractor.embed_images(a)
    eb = extractor.embed_images(b)
    if ea.shape[0] != 1 or eb.shape[0] != 1:
        raise ValueError("identity_score compares one image with one image")
    return float(cosine_score(ea[0], eb[0]))


def _grow(mask: np.ndarray) -> Box:
    b = mask_bbox(mask)
    g = max(IDENTITY_MIN_GROW, round(IDENTITY_GROW * max(b.width, b.height)))
    return grown_box(mask, g, min_size=2)


def region_crop(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """``image`` cropped to ``mask``'s box grown by :data:`IDENTITY_GROW` (at least
    :data:`IDENTITY_MIN_GROW` px), clamped to the image. ``mask`` resized (nearest) when needed."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (image.height, image.width):
        import cv2

        mask = cv2.resize(mask.astype(np.uint8), image.size, interpolation=cv2.INTER_NEAREST).astype(bool)
    if not mask.any():
        return image.convert("RGB")
    return image.convert("RGB").crop(_grow(mask).as_tuple())


@dataclass
class IdentityCrops:
    output: Image.Image  # the refined region
    reference: Image.Image  # the corresponding region of the reference
    reference_region: str  # "true" | "predicted" | "object" | "whole"


def identity_crops(case: Any, output_image: Image.Image, predicted: np.ndarray | None = None) -> IdentityCrops:
    """The two crops CLIP-I / DINO-I compare (see the module docstring for the rule); ``predicted``:
    the method's region (M*) on the reference, if any."""
    out = region_crop(output_image, case.mask)
    ref = case.reference
    for region, name in ((case.region, "true"), (predicted, "predicted"), (case.reference_mask, "object")):
        if region is not None and np.asarray(region).any():
            return IdentityCrops(out, region_crop(ref, region), name)
    return IdentityCrops(out, ref.convert("RGB"), "whole")


def load_captions(source: str | os.PathLike | Mapping[str, str] | None) -> dict[str, str]:
    """Captions by case id from a dict, a JSON file (``{"case_id": "caption", ...}``) or a text file
    with one ``case_id<TAB>caption`` (or ``case_id: caption``) per line (blank lines and ``#``
    comments skipped). Raises :class:`InputError` naming the file on any problem."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return {str(k): str(v) for k, v in source.items()}
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"captions '{path}': cannot read ({e})") from None
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" or stripped.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"captions '{path}': not valid JSON ({e})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise InputError(f"captions '{path}': must hold a JSON object mapping case id -> caption string")
        return {str(k): v for k, v in data.items()}
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            cid, cap = line.split("\t", 1)
        elif ":" in line:
            cid, cap = line.split(":", 1)
        else:
            raise InputError(f"captions '{path}' line {n}: expected 'case_id<TAB>caption' or 'case_id: caption'")
        cid, cap = cid.strip(), cap.strip()
        if not cid or not cap:
            raise InputError(f"captions '{path}' line {n}: empty case id or caption")
        out[cid] = cap
    return out


class IdentityScorer:
    """Computes ``clip_t``, ``clip_i``, ``dino_i`` for a case and a method's output.

    ``clip`` / ``dino``: a model folder or hub id, or an already built embedder (shared between
    methods), or None (the metric is None). ``captions``: see :func:`load_captions`; a case without
    a caption there falls back to ``meta["caption"]``, else its CLIP-T is None."""

    def __init__(self, clip: Any = None, dino: Any = None, captions: Any = None):
        self.clip = CLIPEmbedder(clip) if isinstance(clip, (str, os.PathLike)) else clip
        self.dino = DinoEmbedder(dino) if isinstance(dino, (str, os.PathLike)) else dino
        self.captions = load_captions(captions)

    @property
    def active(self) -> bool:
        return self.clip is not None or self.dino is not None

    def caption(self, case: Any) -> str | None:
        cap = self.captions.get(case.id)
        if cap is None:
            cap = (case.meta or {}).get("caption")
        return cap if isinstance(cap, str) and cap.strip() else None

    def score(self, case: Any, output_image: Image.Image, predicted: np.ndarray | None = None) -> dict[str, float | None]:
        scores: dict[str, float | None] = dict.fromkeys(IDENTITY_KEYS)
        if not self.active:
            return scores
        crops = identity_crops(case, output_image, predicted)
        if self.clip is not None:
            emb = self.clip.embed_images([crops.output, crops.reference, output_image])
            scores["clip_i"] = float(cosine_score(emb[0], emb[1]))
            cap = self.caption(case)
            if cap is not None and getattr(self.clip, "tokenizer", None) is not None:
                scores["clip_t"] = float(cosine_score(emb[2], self.clip.embed_texts([cap])[0]))
        if self.dino is not None:
            emb = self.dino.embed_images([crops.output, crops.reference])
            scores["dino_i"] = float(cosine_score(emb[0], emb[1]))
        return scores
