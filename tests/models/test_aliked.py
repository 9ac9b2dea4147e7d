"""ALIKED (Zhao et al., IEEE TIM 2023): the grid_sample deformable convolution against a direct loop
with torchvision's semantics, matching helpers, and (when ../shared/weights is there) the published
weights: strict load, shapes, determinism and matches on a synthetic homography of a real photo."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from refine_by_align.models.aliked import (
    ALIKED,
    SDDH,
    ALIKED_CONFIGS,
    ALIKEDConfig,
    convert_checkpoint,
    deform_conv2d,
    detect_and_describe,
    detect_keypoints,
    find_weights,
    mutual_nn_matches,
    simple_nms,
)
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO.parent / "shared" / "data" / "dreambooth-train" / "cat" / "00.jpg"


# ----------------------------------------------------------------------------- deformable convolution


def _bilinear_tv(img: np.ndarray, y: float, x: float) -> np.ndarray:
    """torchvision's deform_conv2d bilinear_interpolate: img (C, H, W) at (y, x), corners outside
    the image count as zero, and the sample is zero when y <= -1, y >= H, x <= -1 or x >= W."""
    c, h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return np.zeros(c)
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    out = np.zeros(c)
    for yy, xx, wt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx), (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
        if 0 <= yy < h and 0 <= xx < w:
            out += wt * img[:, yy, xx]
    return out


def _deform_conv_loop(inp, offset, weight, bias, stride, padding, dilation, mask):
    """Direct, slow deformable convolution: one bilinear sample per (batch, output pixel, tap)."""
    inp, offset, weight = inp.double().numpy(), offset.double().numpy(), weight.double().numpy()
    mask = None if mask is None else mask.double().numpy()
    b, c, h, w = inp.shape
    o, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    g = offset.shape[1] // (2 * kh * kw)
    cg = c // g
    out = np.zeros((b, o, ho, wo))
    for bi in range(b):
        for y in range(ho):
            for x in range(wo):
                cols = np.zeros((c, kh, kw))
                for gi in range(g):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy = offset[bi, 2 * (gi * kh * kw + k), y, x]
                            dx = offset[bi, 2 * (gi * kh * kw + k) + 1, y, x]
                            py = y * stride - padding + i * dilation + dy
                            px = x * stride - padding + j * dilation + dx
                            v = _bilinear_tv(inp[bi, gi * cg : (gi + 1) * cg], py, px)
                            if mask is not None:
                                v = v * mask[bi, gi * kh * kw + k, y, x]
                            cols[gi * cg : (gi + 1) * cg, i, j] = v
                out[bi, :, y, x] = np.einsum("ocij,cij->o", weight, cols)
    if bias is not None:
        out += bias.double().numpy()[None, :, None, None]
    return torch.from_numpy(out)


@pytest.mark.parametrize(
    "stride,padding,dilation,groups,use_mask,use_bias",
    [(1, 1, 1, 1, False, False), (2, 1, 1, 1, False, True), (1, 2, 2, 2, True, True), (1, 0, 1, 1, False, False)],
)
def test_deform_conv2d_matches_direct_loop(stride, padding, dilation, groups, use_mask, use_bias):
    g = torch.Generator().manual_seed(stride * 100 + padding * 10 + dilation + groups)
    b, c, h, w, o, k = 2, 4, 6, 7, 3, 3
    inp = torch.randn(b, c, h, w, generator=g)
    weight = torch.randn(o, c, k, k, generator=g)
    bias = torch.randn(o, generator=g) if use_bias else None
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    # offsets of a few pixels: many samples fall between pixels and some outside the image
    offset = 2.5 * torch.randn(b, 2 * groups * k * k, ho, wo, generator=g)
    mask = torch.rand(b, groups * k * k, ho, wo, generator=g) if use_mask else None
    got = deform_conv2d(inp, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)
    want = _deform_conv_loop(inp, offset, weight, bias, stride, padding, dilation, mask)
    assert got.shape == (b, o, ho, wo)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


def test_deform_conv2d_zero_offset_is_conv2d_and_one_pixel_shift():
    g = torch.Generator().manual_seed(1)
    inp, weight = torch.randn(1, 3, 9, 8, generator=g), torch.randn(5, 3, 3, 3, generator=g)
    zero = torch.zeros(1, 18, 9, 8)
    torch.testing.assert_close(deform_conv2d(inp, zero, weight, padding=1), torch.nn.functional.conv2d(inp, weight, padding=1), atol=1e-5, rtol=1e-5)
    # offsets are (dy, dx) per tap: dy = +1 everywhere reads one row lower
    dy = zero.clone()
    dy[:, 0::2] = 1.0
    shifted = deform_conv2d(inp, dy, weight, padding=1)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(inp, (1, 1, 0, 2)), weight)  # tap i of row y reads row y + i
    torch.testing.assert_close(shifted, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- helpers without weights


def test_mutual_nn_matches_and_ratio():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 16)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    perm = rng.permutation(50)
    b = a[perm] + 0.01 * rng.normal(size=(50, 16)).astype(np.float32)
    m = mutual_nn_matches(a, b)
    assert m.shape == (50, 2) and m.dtype == np.int64
    assert np.array_equal(perm[m[:, 1]], m[:, 0])
    assert len(mutual_nn_matches(a, b, ratio=0.8)) == 50
    # an ambiguous b (two near-copies of a[0]) fails the ratio test but can stay mutual without it
    b2 = np.stack([a[0] + 0.01 * a[1], a[0] + 0.01 * a[2]])
    assert len(mutual_nn_matches(a[:1], b2, ratio=0.8)) == 0
    assert len(mutual_nn_matches(a[:1], b2)) == 1
    assert len(mutual_nn_matches(a, b, min_similarity=1.01)) == 0
    m = mutual_nn_matches(a, -a, min_similarity=0.5)
    assert len(m) < 50 and ((a[m[:, 0]] * -a[m[:, 1]]).sum(1) >= 0.5).all()
    assert mutual_nn_matches(a[:0], b).shape == (0, 2)


@pytest.mark.parametrize("levels", [None, 2])
def test_mutual_nn_matches_are_the_argmax_definition_ties_included(levels):
    """The reverse nearest neighbour is found from each column's maximum (not NumPy's argmax along
    the first axis, which is slow there): the matches are exactly the definition's, the first row
    at a column's maximum winning a tie (coarsely quantised descriptors give many exact ties)."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 8)).astype(np.float32)
    b = rng.normal(size=(200, 8)).astype(np.float32)
    if levels is not None:
        a, b = np.round(a * levels) / levels, np.round(b * levels) / levels
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    sim = an @ bn.T
    if levels is not None:
        col_max = sim.max(axis=0)
        assert ((sim == col_max).sum(axis=0) > 1).any()  # the case does hold ties
    nn_ab, nn_ba = sim.argmax(axis=1), sim.argmax(axis=0)
    i = np.arange(len(a))
    keep = (nn_ba[nn_ab] == i) & (sim[i, nn_ab] >= 0.2)
    expected = np.stack((i[keep], nn_ab[keep]), axis=1)
    assert np.array_equal(mutual_nn_matches(a, b, min_similarity=0.2), expected)


# ----------------------------------------------------------------------------- the fast paths against upstream's formulas


def test_sddh_matches_a_direct_loop():
    """SDDH reads the map from an (H, W, C) layout; each descriptor must equal upstream's recipe done
    by hand: the K x K patch at floor(p) - 1 (zero outside), the offsets from it, M bilinear samples
    (corners outside count as zero), the 1x1 convolution and SELU, the M matrices, L2 normalisation."""
    torch.manual_seed(0)
    head = SDDH(dim=6, kernel_size=3, n_pos=4).double().eval()
    with torch.no_grad():
        head.offset_conv[2].weight.mul_(8.0)  # offsets of several pixels, some landing outside the map
    fmap = torch.randn(6, 9, 11, dtype=torch.float64)
    kp = torch.tensor([[0.0, 0.0], [10.0, 8.0], [5.3, 4.7], [0.4, 8.9], [10.99, 0.2]], dtype=torch.float64)
    with torch.no_grad():
        desc, offsets = head(fmap, kp)
        f = fmap.numpy()
        for n, (x, y) in enumerate(kp.tolist()):
            patch = torch.zeros(6, 3, 3, dtype=torch.float64)
            for i in range(3):
                for j in range(3):
                    yy, xx = math.floor(y) - 1 + i, math.floor(x) - 1 + j
                    if 0 <= yy < 9 and 0 <= xx < 11:
                        patch[:, i, j] = fmap[:, yy, xx]
            off = head.offset_conv(patch[None]).clamp(-11 / 4, 11 / 4).reshape(2, 4).t()  # (M, 2) xy
            torch.testing.assert_close(offsets[n], off)
            samples = torch.stack([torch.from_numpy(_bilinear_tv(f, y + float(o[1]), x + float(o[0]))) for o in off])  # (M, C)
            feats = F.selu(samples @ head.sf_conv.weight[:, :, 0, 0].t())  # (M, C)
            d = torch.einsum("mc,mcd->d", feats, head.agg_weights)
            torch.testing.assert_close(desc[n], d / d.norm(), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("batch", [1, 2])
def test_dense_map_equals_upstreams_concatenation(batch):
    """The score head's first layer applied before the upsampling, and the map built channels-last,
    give upstream's outputs: concatenate the four upsampled parts, score head, L2-normalise, crop."""
    torch.manual_seed(0)
    net = ALIKED(ALIKEDConfig(4, 8, 8, 8, 16, 3, 4)).double().eval()
    image = torch.rand(batch, 3, 70, 90, dtype=torch.float64)  # padded to 96 x 96 and cropped back
    with torch.no_grad():
        fmap, score = net.extract_dense_map(image)
        x = F.pad(image, (3, 3, 13, 13), mode="replicate")
        x1 = net.block1(x)
        x2 = net.block2(F.avg_pool2d(x1, 2))
        x3 = net.block3(F.avg_pool2d(x2, 4))
        x4 = net.block4(F.avg_pool2d(x3, 4))
        up = lambda t: F.interpolate(t, size=(96, 96), mode="bilinear", align_corners=True)  # noqa: E731
        feats = torch.cat([F.selu(net.conv1(x1)), up(F.selu(net.conv2(x2))), up(F.selu(net.conv3(x3))), up(F.selu(net.conv4(x4)))], 1)
        want_score = torch.sigmoid(net.score_head(feats))[..., 13:83, 3:93]
        want_map = F.normalize(feats, dim=1)[..., 13:83, 3:93]
    assert fmap.shape == (batch, 16, 70, 90) and score.shape == (batch, 1, 70, 90)
    torch.testing.assert_close(score, want_score, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(fmap, want_map, atol=1e-12, rtol=1e-10)


def test_sparse_map_reads_the_dense_maps_values_and_descriptors():
    """extract_sparse_map gives the dense path's score map, its map's rows at any pixels, and SDDH's
    descriptors from it: bit-identical (the same operations, on the pixels read); B > 1 is refused."""
    from refine_by_align.models.aliked import SparseFeatureMap

    torch.manual_seed(0)
    net = ALIKED(ALIKEDConfig(4, 8, 8, 8, 16, 3, 4)).eval()
    image = torch.rand(1, 3, 70, 90)  # padded to 96 x 96 and cropped back
    with torch.no_grad():
        fmap, score = net.extract_dense_map(image)
        sparse, sparse_score = net.extract_sparse_map(image)
        assert isinstance(sparse, SparseFeatureMap) and sparse.shape == (16, 70, 90)
        assert torch.equal(score, sparse_score)
        g = torch.Generator().manual_seed(1)
        ys, xs = torch.randint(0, 70, (300,), generator=g), torch.randint(0, 90, (300,), generator=g)
        assert torch.equal(sparse.rows(ys, xs), fmap[0][:, ys, xs].t())
        kpts = torch.rand(40, 2, generator=g) * torch.tensor([89.0, 69.0])
        kpts[:4] = torch.tensor([[0.0, 0.0], [89.0, 69.0], [0.3, 68.7], [88.9, 0.2]])  # corners: samples fall outside the map
        assert torch.equal(net.describe(sparse, kpts), net.describe(fmap[0], kpts))
        with pytest.raises(ValueError, match="one image"):
            net.extract_sparse_map(torch.rand(2, 3, 32, 32))
    # with gradients on (not in place): the descriptors can be differentiated
    grad_image = image.clone().requires_grad_(True)
    sparse_g, _ = net.extract_sparse_map(grad_image)
    net.describe(sparse_g, kpts).sum().backward()
    assert grad_image.grad is not None and torch.isfinite(grad_image.grad).all()


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_simple_nms_equals_the_square_window(radius):
    """The (2r+1)^2 maximum taken as a row pass then a column pass of shifted maxima keeps exactly
    the square window's maxima (``F.max_pool2d``'s, padded with -inf)."""
    g = torch.Generator().manual_seed(radius)
    scores = torch.rand(1, 1, 41, 50, generator=g).round(decimals=1)  # many ties

    def square(x):
        return F.max_pool2d(x, kernel_size=2 * radius + 1, stride=1, padding=radius)

    zeros = torch.zeros_like(scores)
    max_mask = scores == square(scores)
    for _ in range(2):
        supp = square(max_mask.float()) > 0
        s2 = torch.where(supp, zeros, scores)
        max_mask = max_mask | ((s2 == square(s2)) & ~supp)
    assert torch.equal(simple_nms(scores, radius), torch.where(max_mask, scores, zeros))


def test_detect_keypoints_subpixel_and_border():
    # a symmetric blob centred between pixels (x = 10.5, y = 7): soft-argmax puts it in between
    yy, xx = np.mgrid[0:20, 0:24]
    s = np.exp(-((xx - 10.5) ** 2 + (yy - 7.0) ** 2) / 1.0)
    s[1, 1] = 0.9  # a maximum inside the border margin is dropped
    kp, sc = detect_keypoints(torch.tensor(s, dtype=torch.float32), radius=2, max_keypoints=10)
    assert len(kp) >= 1
    np.testing.assert_allclose(kp[0].numpy(), [10.5, 7.0], atol=5e-3)  # (the 5x5 window is not symmetric about 10.5)
    assert not ((kp[:, 0] < 2) & (kp[:, 1] < 2)).any()
    assert sc[0] > 0.5


def test_find_weights_lookup(tmp_path, monkeypatch):
    f = tmp_path / "aliked" / "aliked-t16.safetensors"
    f.parent.mkdir()
    f.write_bytes(b"")
    assert find_weights("aliked-t16", f) == f
    assert find_weights("aliked-t16", tmp_path / "aliked") == f
    assert find_weights("aliked-t16", tmp_path) == f  # a folder holding aliked/NAME.safetensors
    assert find_weights("aliked-t16", tmp_path / "missing.safetensors") is None
    monkeypatch.setenv("REFINE_BY_ALIGN_WEIGHTS", str(tmp_path))
    assert find_weights("aliked-t16") == f
    monkeypatch.chdir(tmp_path)
    assert find_weights("aliked-nonexistent") is None


def test_load_aliked_by_name_gives_that_networks_config(tmp_path, monkeypatch):
    """``--matcher-weights aliked-t16`` (README: the faster alignment) is a weights name looked up
    in the weights folder: load_aliked gives the tiny network (64-d descriptors) with the tensors
    of that file, and the default name the n16 network (128-d)."""
    from safetensors.torch import save_file

    from refine_by_align.models.aliked import load_aliked

    torch.manual_seed(0)
    for name in ("aliked-t16", "aliked-n16"):
        net = ALIKED(ALIKED_CONFIGS[name])
        (tmp_path / "aliked").mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "aliked" / f"{name}.safetensors"))
    monkeypatch.setenv("REFINE_BY_ALIGN_WEIGHTS", str(tmp_path))
    tiny, reason = load_aliked("aliked-t16")
    assert reason == "" and tiny.descriptor_dim == 64 and tiny.config == ALIKED_CONFIGS["aliked-t16"]
    default, _ = load_aliked(None)
    assert default.descriptor_dim == 128
    missing, reason = load_aliked("aliked-nonexistent")
    assert missing is None and "aliked-nonexistent.safetensors" in reason and "\n" not in reason


def test_from_pretrained_missing_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked in") as e:
        ALIKED.from_pretrained(tmp_path / "nope.safetensors")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="safetensors"):
        ALIKED.from_pretrained(tmp_path / "aliked-n16.pth")


class _NotATensor:  # a pickled object the restricted loader must refuse
    def __reduce__(self):
        return (os.getcwd, ())


def test_convert_checkpoint_round_trip_and_refusals(tmp_path):
    """Upstream's .pth (a pickled state dict) -> safetensors that from_pretrained loads with the same
    tensors; a pickle holding anything but tensors, a state dict of another network and a wrong
    output name are refused before anything is written."""
    torch.manual_seed(0)
    net = ALIKED(ALIKED_CONFIGS["aliked-t16"])
    src = tmp_path / "aliked-t16.pth"
    torch.save(net.state_dict(), src)
    out = convert_checkpoint(src)
    assert out == tmp_path / "aliked-t16.safetensors"
    loaded = ALIKED.from_pretrained(out)
    assert loaded.config == ALIKED_CONFIGS["aliked-t16"]
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    torch.save({"state_dict": net.state_dict()}, tmp_path / "wrapped.pth")  # a training checkpoint's layout
    assert convert_checkpoint(tmp_path / "wrapped.pth", tmp_path / "w" / "x.safetensors").is_file()

    evil = tmp_path / "evil.pth"
    torch.save({"block1.conv1.weight": _NotATensor()}, evil)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint of tensors"):
        convert_checkpoint(evil)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not an ALIKED"):
        convert_checkpoint(other)
    partial = {k: v for k, v in net.state_dict().items() if not k.startswith("desc_head.agg")}
    partial.update({"desc_head.agg_weights": net.state_dict()["desc_head.agg_weights"], "extra.weight": torch.zeros(1)})
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="unexpected"):
        convert_checkpoint(tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="safetensors"):
        convert_checkpoint(src, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="file not found"):
        convert_checkpoint(tmp_path / "missing.pth")
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["aliked-t16.safetensors"]


# ----------------------------------------------------------------------------- published weights


@pytest.fixture(scope="module")
def weights_path():
    p = find_weights("aliked-n16")
    if p is None:
        pytest.skip(
            "../shared/weights/aliked/aliked-n16.safetensors not found: put the shared folder next to the "
            "repository or set REFINE_BY_ALIGN_WEIGHTS to a folder holding aliked/aliked-n16.safetensors"
        )
    return p


@pytest.fixture(scope="module")
def model(weights_path):
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return ALIKED.from_pretrained("aliked-n16")


def test_strict_load_shapes_no_nan_determinism(model, weights_path):
    assert not model.training
    sd = model.state_dict()
    with safe_open(str(weights_path), "pt") as f:
        assert set(f.keys()) == set(sd)
        for k in ("block1.bn1.running_var", "block4.conv2.offset_conv.weight", "desc_head.agg_weights"):
            assert torch.equal(f.get_tensor(k), sd[k])
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 70, 90, generator=g)  # not a multiple of 32: padded and cropped back
    with torch.no_grad():
        score, desc = model(image)
        score2, desc2 = model(image)
    assert score.shape == (2, 1, 70, 90) and desc.shape == (2, 128, 70, 90)
    assert torch.isfinite(score).all() and torch.isfinite(desc).all()
    assert (score > 0).all() and (score < 1).all()
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2, 70, 90), atol=1e-4, rtol=0)
    assert torch.equal(score, score2) and torch.equal(desc, desc2)

    rgb = (image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    k1, d1, s1 = detect_and_describe(model, rgb, max_keypoints=50)
    k2, d2, s2 = detect_and_describe(model, rgb, max_keypoints=50)
    assert k1.shape == (50, 2) and d1.shape == (50, 128) and s1.shape == (50,)
    assert k1.dtype == d1.dtype == s1.dtype == np.float32
    assert np.isfinite(d1).all() and np.allclose(np.linalg.norm(d1, axis=1), 1, atol=1e-4)
    assert np.array_equal(k1, k2) and np.array_equal(d1, d2) and np.array_equal(s1, s2)
    assert (k1[:, 0] >= 0).all() and (k1[:, 0] <= 89).all() and (k1[:, 1] >= 0).all() and (k1[:, 1] <= 69).all()

    mask = np.zeros((70, 90), bool)
    mask[:, :45] = True
    km, _, _ = detect_and_describe(model, rgb, mask=mask, max_keypoints=50)
    assert len(km) > 0 and (np.round(km[:, 0]) < 45).all()


def test_matches_on_synthetic_homography(model):
    cv2 = pytest.importorskip("cv2")
    if not PHOTO.is_file():
        pytest.skip(f"{PHOTO} not found (the shared photos are absent)")
    rgb = cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)
    rgb = cv2.resize(rgb, (320, 240), interpolation=cv2.INTER_AREA)
    h, w = rgb.shape[:2]
    # rotation 10 degrees, scale 0.9 about the centre, and a moderate perspective
    a, s = math.radians(10), 0.9
    centre = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]])
    rot = np.array([[s * math.cos(a), -s * math.sin(a), 0], [s * math.sin(a), s * math.cos(a), 0], [0, 0, 1]])
    persp = np.array([[1, 0, 0], [0, 1, 0], [4e-4, -3e-4, 1]])
    H = centre @ persp @ rot @ np.linalg.inv(centre)
    H /= H[2, 2]
    warped = cv2.warpPerspective(rgb, H, (w, h), flags=cv2.INTER_LINEAR)
    ka, da, _ = detect_and_describe(model, rgb, max_keypoints=1024)
    kb, db, _ = detect_and_describe(model, warped, max_keypoints=1024)
    m = mutual_nn_matches(da, db)
    assert len(m) >= 200
    proj = cv2.perspectiveTransform(ka[m[:, 0]].astype(np.float64)[None], H)[0]
    err = np.linalg.norm(proj - kb[m[:, 1]], axis=1)
    assert np.mean(err < 3) >= 0.9, (len(m), np.mean(err < 3), np.median(err))
    assert np.median(err) < 1.0
