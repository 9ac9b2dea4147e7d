"""Fixtures: tiny synthetic case folders."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def _write_case(root: Path, cid: str, rng: np.random.Generator, kind: str | None, with_corr: bool, with_target: bool) -> None:
    d = root / cid
    d.mkdir(parents=True)
    h, w = 40, 48
    target = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = target.copy()
    mask = np.zeros((h, w), bool)
    mask[12:24, 16:30] = True
    image[mask] = (255, 0, 255)  # the "artifact"
    Image.fromarray(image).save(d / "image.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(d / "mask.png")
    ref = rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)
    Image.fromarray(ref).save(d / "reference.png")
    if with_corr:
        corr = np.zeros((36, 44), bool)
        corr[10:20, 12:26] = True
        Image.fromarray(corr.astype(np.uint8) * 255).save(d / "correspondence.png")
    if with_target:
        Image.fromarray(target).save(d / "target.png")
    if kind is not None:
        (d / "meta.json").write_text(json.dumps({"kind": kind, "note": "synthetic"}))


@pytest.fixture
def cases_dir(tmp_path: Path) -> Path:
    """Three cases: two of kind 'dreambooth' (one without correspondence), one default-kind."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cases"
    _write_case(root, "c01", rng, "dreambooth", with_corr=True, with_target=True)
    _write_case(root, "c02", rng, "dreambooth", with_corr=False, with_target=True)
    _write_case(root, "c03", rng, None, with_corr=True, with_target=False)
    return root


@dataclass
class FakeOutput:
    image: Image.Image
    region: np.ndarray | None
    heatmap: np.ndarray | None = None
    crop_box: tuple | None = None
    timings: dict = field(default_factory=dict)


class FakePipeline:
    """Returns the input with the mask painted grey and the case's true region (if aligning)."""

    def __init__(self, region: np.ndarray | None):
        self.region = region
        self.calls = []

    def __call__(self, image, mask, reference, reference_mask=None, num_inference_steps=None,
                 guidance_scale=None, seed=0, align=True):
        self.calls.append(dict(align=align, seed=seed, num_inference_steps=num_inference_steps,
                               reference_mask=reference_mask))
        arr = np.asarray(image).copy()
        arr[mask] = 128
        region = self.region if align else None
        heat = None if region is None else region.astype(np.float32)
        return FakeOutput(Image.fromarray(arr), region, heat, timings={"total": 0.01})


@pytest.fixture
def fake_pipeline():
    """The FakePipeline class (call it with the region it should return)."""
    return FakePipeline


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random-init CLIPModel (+ a byte-level CLIPTokenizer) saved with save_pretrained."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    d = tmp_path_factory.mktemp("clip")
    with torch.random.fork_rng():  # leave the global RNG as other tests expect it
        torch.manual_seed(0)
        model = CLIPModel(cfg)
    model.save_pretrained(d)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def dino_dir(tmp_path_factory) -> Path:
    """A tiny random-init Dinov2Model saved with save_pretrained."""
    from transformers import Dinov2Config, Dinov2Model

    d = tmp_path_factory.mktemp("dino")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                         image_size=28, patch_size=14))
    model.save_pretrained(d)
    return d
