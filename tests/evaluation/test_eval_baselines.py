"""Baselines: keypoint (SIFT + homography + Poisson), feature-nn, oracle-align."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from refine_by_align.evaluation.baselines import (
    FeatureNNMethod,
    KeypointMethod,
    OracleAlignMethod,
    feature_nn_region,
    poisson_fill,
)
from refine_by_align.evaluation.bench import run_bench
from refine_by_align.evaluation.cases import load_case, load_cases
from refine_by_align.evaluation.registry import METHODS, get_method
from refine_by_align.evaluation.metrics import iou, masked_psnr

S = 128
H_TRUE = np.array([[1.07, -0.15, 6.0], [0.15, 1.07, -8.0], [2e-4, -1e-4, 1.0]])


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3)
    img = ((base - base.min()) / (base.max() - base.min()) * 160 + 40).astype(np.uint8)
    for _ in range(40):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), int(rng.integers(3, 10)), c, -1)
        else:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(4, 14)), y + int(rng.integers(4, 14))), c, -1)
    return img


def _planted_case(root: Path, brightness: int = 0, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """Image = textured reference warped by H_TRUE with a magenta artifact in the mask. The
    reference may be brighter than the scene by ``brightness`` (an illumination change)."""
    rng = np.random.default_rng(seed)
    ref = _texture(rng, S, S)
    target = cv2.warpPerspective(ref, H_TRUE, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = np.zeros((S, S), bool)
    mask[50:74, 48:76] = True
    image = target.copy()
    image[mask] = (255, 0, 255)
    truth = cv2.warpPerspective(mask.astype(np.uint8) * 255, np.linalg.inv(H_TRUE), (S, S), flags=cv2.INTER_NEAREST) > 127
    d = root / f"planted{brightness}"
    d.mkdir(parents=True)
    Image.fromarray(image).save(d / "image.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(d / "mask.png")
    Image.fromarray(np.clip(ref.astype(int) + brightness, 0, 255).astype(np.uint8)).save(d / "reference.png")
    Image.fromarray(target).save(d / "target.png")
    Image.fromarray(truth.astype(np.uint8) * 255).save(d / "correspondence.png")
    return d, target, mask, truth


def test_keypoint_recovers_planted_homography(tmp_path: Path):
    d, target, mask, truth = _planted_case(tmp_path)
    case = load_case(d)
    out = KeypointMethod()(case)
    assert not out.fallback and out.info["inliers"] >= 8
    res = np.asarray(out.image)
    assert masked_psnr(res, target, mask) > 25.0
    assert out.region.shape == (S, S) and iou(out.region, truth) > 0.7
    # pixels outside the (dilated) mask are unchanged
    far = ~cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert np.array_equal(res[far], np.asarray(case.image)[far])


def test_keypoint_poisson_absorbs_illumination_change(tmp_path: Path):
    d, target, mask, _ = _planted_case(tmp_path, brightness=30)
    case = load_case(d)
    blended = masked_psnr(np.asarray(KeypointMethod()(case).image), target, mask)
    pasted = masked_psnr(np.asarray(KeypointMethod(blend=False)(case).image), target, mask)
    assert blended > 25.0 and blended > pasted + 5.0


def test_keypoint_falls_back_to_telea(tmp_path: Path):
    d, *_ = _planted_case(tmp_path / "cases")
    Image.new("RGB", (S, S), (120, 120, 120)).save(d / "reference.png")  # no keypoints at all
    case = load_case(d)
    out = KeypointMethod()(case)
    assert out.fallback and out.region is None and "keypoints" in out.info["reason"]
    telea = METHODS["telea"]()(case)
    assert np.array_equal(np.asarray(out.image), np.asarray(telea.image))
    res = run_bench(tmp_path / "cases", tmp_path / "out", method="keypoint", progress=False)
    assert res["cases"][0]["fallback"] is True and res["summary"]["ALL"]["fallbacks"] == 1
    assert res["cases"][0]["miou"] is None


def test_poisson_fill_mask_on_border():
    rng = np.random.default_rng(3)
    img = _texture(rng, 40, 50)
    fill = np.clip(img.astype(int) + 20, 0, 255).astype(np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[0:10, 40:50] = True  # touches two borders
    out = poisson_fill(img, fill, mask, dilate_px=3)
    grown = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))).astype(bool)
    assert np.array_equal(out[~grown], img[~grown])
    assert np.abs(out[mask].astype(int) - img[mask].astype(int)).mean() < 6  # the offset is absorbed


def test_registry_has_baselines():
    assert {"keep", "telea", "harmonic", "fsr", "mixed", "keypoint", "feature-nn", "oracle-align", "refine-by-align", "single-stage"} <= set(METHODS)
    assert get_method("keypoint", ratio=0.8).ratio == 0.8


def test_feature_nn_and_oracle_run(tiny_pipe, cases_dir: Path):
    c1, c2 = load_cases(cases_dir, limit=2)
    fnn = FeatureNNMethod(tiny_pipe, num_inference_steps=2)
    out = fnn(c1)
    assert out.image.size == c1.image.size and not out.fallback
    assert out.region.dtype == bool and out.region.shape == (36, 44) and out.region.any()
    assert out.heatmap.shape == (36, 44)
    oracle = OracleAlignMethod(tiny_pipe, num_inference_steps=2)
    o1 = oracle(c1)
    assert np.array_equal(o1.region, c1.region) and not o1.fallback
    o2 = oracle(c2)  # no correspondence.png: aligned by the model, flagged
    assert o2.fallback and o2.region.shape == (36, 44)
    # the refinement stage is the pipeline's: same region and seed -> same pixels
    direct = tiny_pipe(c1.image, c1.mask, c1.reference, region=out.region, num_inference_steps=2)
    assert np.array_equal(np.asarray(direct.image), np.asarray(out.image))


def test_feature_nn_votes_nearest_token(tiny_pipe, cases_dir: Path, monkeypatch):
    """Every masked crop token is nearest to reference token 5 (row 1, col 1): the region is that
    token's cell on the reference."""
    from refine_by_align.pipelines.alignment import grid_to_reference

    case = load_cases(cases_dir, limit=1)[0]
    enc = tiny_pipe.model.reference_encoder
    g, n = enc.grid_size, enc.grid_size**2
    calls = []

    def fake_tokens(images):
        calls.append(images.shape)
        if len(calls) % 2 == 1:  # the crop
            return torch.eye(n)[5].expand(1, n, n) + 0.01 * torch.rand(1, n, n)
        return torch.eye(n)[None]  # the reference: token k = e_k

    monkeypatch.setattr(enc, "patch_tokens", fake_tokens)
    m, heat = feature_nn_region(tiny_pipe, case.image, case.mask, case.reference)
    p = tiny_pipe.prepare(case.image, case.mask, case.reference)
    cell = np.zeros((g, g), bool)
    cell[1, 1] = True
    assert np.array_equal(m, grid_to_reference(cell, p.reference_box, (36, 44)))
    assert 0.5 < heat.max() <= 1.0 and heat.min() >= 0.0
    assert m[np.unravel_index(np.argmax(heat), heat.shape)]  # the heat map peaks inside the region


def test_method_output_old_names_still_read_with_a_deprecation_warning():
    """Issue 14 item 5: a method's M* is ``region``, its map ``heatmap``; the old names read the same
    values for one more release, with a warning."""
    from refine_by_align.evaluation.methods import MethodOutput

    out = MethodOutput(Image.new("RGB", (4, 4)), region=np.eye(4, dtype=bool), heatmap=np.ones((4, 4), np.float32))
    with pytest.warns(DeprecationWarning, match=r"MethodOutput\.correspondence is deprecated, use \.region"):
        assert out.correspondence is out.region
    with pytest.warns(DeprecationWarning, match=r"MethodOutput\.correspondence_map is deprecated, use \.heatmap"):
        assert out.correspondence_map is out.heatmap


def test_harmonic_baseline_fills_only_the_mask(tmp_path: Path):
    from refine_by_align.fill import harmonic_fill

    d, *_ = _planted_case(tmp_path / "cases")
    case = load_case(d)
    out = np.asarray(METHODS["harmonic"]()(case).image)
    rgb, m = np.asarray(case.image.convert("RGB")), np.asarray(case.mask, bool)
    assert np.array_equal(out[~m], rgb[~m]) and not np.array_equal(out[m], rgb[m])
    assert np.array_equal(out, harmonic_fill(rgb, m))


@pytest.mark.parametrize("name", ["fsr", "mixed", "mixed-local"])
def test_fsr_and_mixed_baselines_fill_only_the_mask(tmp_path: Path, name: str):
    from refine_by_align.evaluation.methods import ClassicalFillMethod
    from refine_by_align.fill import classical_fill

    d, *_ = _planted_case(tmp_path / "cases")
    case = load_case(d)
    method = METHODS[name]()
    assert method.name == name
    out = np.asarray(method(case).image)
    rgb, m = np.asarray(case.image.convert("RGB")), np.asarray(case.mask, bool)
    assert np.array_equal(out[~m], rgb[~m]) and not np.array_equal(out[m], rgb[m])
    assert np.array_equal(out, classical_fill(rgb, m, name))
    with pytest.raises(ValueError, match="classical fill baseline"):
        ClassicalFillMethod("telea")
