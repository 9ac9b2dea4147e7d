"""CLIP-I / DINO-I / CLIP-T with tiny random-init transformers models saved to disk."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refine_by_align.evaluation.bench import run_bench
from refine_by_align.evaluation.cases import load_case, load_cases
from refine_by_align.evaluation.identity import (
    CLIPEmbedder,
    DinoEmbedder,
    IdentityScorer,
    ImageFeatureExtractor,
    cosine_score,
    identity_crops,
    identity_score,
    load_captions,
    region_crop,
)
from refine_by_align.io import InputError


@pytest.fixture(scope="module")
def embedders(clip_dir, dino_dir):
    return CLIPEmbedder(clip_dir), DinoEmbedder(dino_dir)


def _img(seed: int, h: int = 30, w: int = 41) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_contract_and_sizes(embedders):
    clip, dino = embedders
    for e in (clip, dino):
        assert isinstance(e, ImageFeatureExtractor)
    assert (clip.resize_to, clip.crop_to) == (32, 32)  # config image_size, CLIP processor style
    assert (dino.resize_to, dino.crop_to) == (32, 28)  # 256/224 resize then crop, DINOv2 style
    assert torch.allclose(clip.mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))
    assert torch.allclose(dino.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert clip.preprocess(_img(0)).shape == (1, 3, 32, 32)
    assert dino.preprocess([_img(0), _img(1, 50, 20)]).shape == (2, 3, 28, 28)


def test_pil_and_tensor_inputs_agree(embedders):
    clip, dino = embedders
    im = _img(2)
    t = torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1)
    for e in (clip, dino):
        a = e.embed_images(im)
        assert torch.allclose(a, e.embed_images(t[None]), atol=1e-5)
        assert torch.allclose(a, e.embed_images(t), atol=1e-5)
        assert e.embed_images(torch.stack([t, t])).shape[0] == 2


def test_preprocessor_config_is_used(tmp_path, clip_dir):
    import shutil

    d = tmp_path / "clip2"
    shutil.copytree(clip_dir, d)
    (d / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32},
        "do_center_crop": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
    }))
    e = CLIPEmbedder(d)
    assert (e.resize_to, e.crop_to) == (40, 32)
    assert torch.allclose(e.std.flatten(), torch.full((3,), 0.25))


@pytest.mark.parametrize("which", [0, 1])
def test_identical_symmetric_bounded(embedders, which):
    e = embedders[which]
    a, b = _img(3), _img(4, 20, 25)
    assert identity_score(e, a, a) == pytest.approx(100.0, abs=1e-3)
    assert identity_score(e, a, b) == pytest.approx(identity_score(e, b, a), abs=1e-6)
    for s in range(5):
        v = identity_score(e, _img(10 + s), _img(20 + s, 17, 33))
        assert -100.0 <= v <= 100.0


def test_cosine_score_bounds():
    a = torch.randn(7, 5)
    assert torch.allclose(cosine_score(a, a), torch.full((7,), 100.0, dtype=torch.float64))
    assert torch.allclose(cosine_score(a, -a), torch.full((7,), -100.0, dtype=torch.float64))


def test_clip_text(embedders):
    clip, _ = embedders
    t = clip.embed_texts(["a red backpack", "a dog"])
    assert t.shape == (2, 8) and torch.isfinite(t).all()


def test_region_crop_and_rule(cases_dir: Path):
    c1, c2, _ = load_cases(cases_dir)
    out = region_crop(c1.image, c1.mask)  # mask box 14x12 at (16, 12), grown by 4 px
    assert out.size == (14 + 8, 12 + 8)
    crops = identity_crops(c1, c1.image, predicted=None)
    assert crops.reference_region == "true" and crops.reference.size == (14 + 8, 10 + 8)
    pred = np.zeros((36, 44), bool)
    pred[0:5, 0:5] = True
    assert identity_crops(c1, c1.image, pred).reference_region == "true"  # the truth wins
    assert identity_crops(c2, c2.image, pred).reference_region == "predicted"
    assert identity_crops(c2, c2.image, pred).reference.size == (9, 9)  # 5 + 4 (clamped at 0)
    assert identity_crops(c2, c2.image, None).reference_region == "whole"


def test_captions(tmp_path: Path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"c01": "a backpack", "c02": "a candle"}))
    assert load_captions(j) == {"c01": "a backpack", "c02": "a candle"}
    t = tmp_path / "c.txt"
    t.write_text("# comment\nc01\ta backpack\n\nc02: a red candle\n")
    assert load_captions(t) == {"c01": "a backpack", "c02": "a red candle"}
    t.write_text("no separator here\n")
    with pytest.raises(InputError, match="line 1"):
        load_captions(t)
    j.write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON object"):
        load_captions(j)
    assert load_captions(None) == {}


def test_missing_model_is_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="CLIP model"):
        CLIPEmbedder(tmp_path / "nope")


def test_scorer_identical_region_is_100(embedders, cases_dir: Path):
    # an output whose refined region is the reference's true region scores 100 on both metrics
    case = load_case(cases_dir / "c01")
    ref = np.asarray(case.reference)
    # true region: 14x10 box at (12, 10), grown by 4 px -> ref[6:24, 8:30]; a 14x10 mask at (16, 12)
    # grown the same way -> image[8:26, 12:34]: paste the one into the other
    case.mask = np.zeros((40, 48), bool)
    case.mask[12:22, 16:30] = True
    img = np.zeros((40, 48, 3), np.uint8)
    img[8:26, 12:34] = ref[6:24, 8:30]
    scorer = IdentityScorer(*embedders, captions={"c01": "a thing"})
    s = scorer.score(case, Image.fromarray(img))
    assert s["clip_i"] == pytest.approx(100.0, abs=1e-3) and s["dino_i"] == pytest.approx(100.0, abs=1e-3)
    assert -100.0 <= s["clip_t"] <= 100.0
    assert IdentityScorer().score(case, Image.fromarray(img)) == {"clip_t": None, "clip_i": None, "dino_i": None}


def test_run_bench_fills_identity_keys(embedders, clip_dir, dino_dir, cases_dir: Path, tmp_path: Path):
    caps = tmp_path / "caps.txt"
    caps.write_text("c01\ta thing\nc03\tanother thing\n")
    res = run_bench(cases_dir, tmp_path / "r", method="keep", progress=False, clip=clip_dir, dino=dino_dir, captions=caps)
    by = {c["case"]: c for c in res["cases"]}
    for c in by.values():
        assert -100 <= c["clip_i"] <= 100 and -100 <= c["dino_i"] <= 100
    assert by["c01"]["clip_t"] is not None and by["c02"]["clip_t"] is None  # no caption for c02
    s = res["summary"]["ALL"]
    assert s["clip_i"] == pytest.approx(np.mean([c["clip_i"] for c in by.values()]))
    assert s["clip_t"] == pytest.approx(np.mean([by["c01"]["clip_t"], by["c03"]["clip_t"]]))
    # an already built embedder is accepted too (run_all shares them between methods)
    res2 = run_bench(cases_dir, tmp_path / "r2", method="keep", progress=False, clip=embedders[0], captions=caps)
    assert res2["cases"][0]["clip_i"] == pytest.approx(by["c01"]["clip_i"], abs=1e-5)
    assert res2["cases"][0]["dino_i"] is None
