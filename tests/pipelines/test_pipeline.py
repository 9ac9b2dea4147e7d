import cv2
import numpy as np
from scipy import ndimage
import pytest
from PIL import Image

from refine_by_align.io import InputError


def _dilated(mask, px):
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


def test_refine_output_types_and_untouched_pixels(tiny_pipe, simple_inputs):
    image, mask, reference = simple_inputs
    out = tiny_pipe(image, mask, reference, seed=3)
    assert out.image.size == image.size and out.image.mode == "RGB"
    a, b = np.asarray(out.image), np.asarray(image)
    region = _dilated(mask, tiny_pipe.model.cfg.paste_dilate)
    assert np.array_equal(a[~region], b[~region])
    assert (a[mask] != b[mask]).any()
    assert out.region.shape == (reference.height, reference.width)
    assert out.region.dtype == bool and out.region.any()
    assert out.heatmap.shape == (reference.height, reference.width)
    assert np.isfinite(out.heatmap).all()
    assert set(out.timings) >= {"align", "denoise", "total"}
    assert out.random_weights


def test_refine_is_deterministic_with_a_seed(tiny_pipe, simple_inputs):
    image, mask, reference = simple_inputs
    a = np.asarray(tiny_pipe(image, mask, reference, seed=7).image)
    b = np.asarray(tiny_pipe(image, mask, reference, seed=7).image)
    c = np.asarray(tiny_pipe(image, mask, reference, seed=8).image)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_expected_output_slice(tiny_pipe):
    """Pins the tiny pipeline's numbers on CPU (torch 2.13, seeded init and sampling; v-prediction)."""
    yy, xx = np.mgrid[0:64, 0:64]
    image = Image.fromarray(np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8))
    mask = np.zeros((64, 64), bool)
    mask[24:40, 20:44] = True
    reference = Image.fromarray(np.stack([yy * 4, xx * 4, 255 - xx * 4], -1).astype(np.uint8))
    out = np.asarray(tiny_pipe(image, mask, reference, seed=0).image)
    got = out[32, 20:44:3, :].T.astype(int)
    expected = np.array(
        [
            [173, 123, 171, 67, 36, 58, 87, 16],
            [196, 43, 77, 225, 202, 181, 186, 35],
            [147, 251, 239, 165, 94, 136, 0, 123],
        ]
    )
    assert np.abs(got - expected).max() <= 2, got.tolist()


def test_no_trusted_warp_means_the_whole_reference_object_guides(tiny_pipe):
    """After a dense alignment whose warp is trusted nowhere in the mask, the whole reference object
    guides the model (the single-stage redraw, the same pixels) and a note says so; M* is still
    reported. With the warp switched off, Algorithm 1 chosen, or M* given, M* guides as before."""
    yy, xx = np.mgrid[0:64, 0:64]
    image = Image.fromarray(np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8))
    mask = np.zeros((64, 64), bool)
    mask[24:40, 20:44] = True
    reference = Image.fromarray(np.stack([yy * 4, xx * 4, 255 - xx * 4], -1).astype(np.uint8))  # shares nothing
    out = tiny_pipe(image, mask, reference, seed=0)
    single = tiny_pipe(image, mask, reference, seed=0, align=False)
    assert out.region is not None and out.warp_fraction == 0.0
    assert np.array_equal(np.asarray(out.image), np.asarray(single.image))
    assert out.reference_box == single.reference_box
    assert any("whole reference object guided" in n for n in out.notes), out.notes
    for kw in ({"warp": False}, {"alignment": "attention"}, {"region": out.region}):
        other = tiny_pipe(image, mask, reference, seed=0, **kw)
        assert other.reference_box != single.reference_box, kw
        assert not np.array_equal(np.asarray(other.image), np.asarray(single.image)), kw
        assert not any("whole reference object guided" in n for n in other.notes), kw


def test_a_region_off_a_given_reference_object_does_not_guide_with_black(tiny_pipe, simple_inputs):
    """An M* that lies off the given reference object (the reference is black there) guided the
    model with tokens of black pixels (with --no-warp: a dark blotch, 17.8 against 33.0 dB in a
    probe); the whole object guides instead, and a note says so. M* on the object still guides."""
    image, mask, reference = simple_inputs
    ref_mask = np.zeros((reference.height, reference.width), bool)
    ref_mask[:, :36] = True  # the object: the left half
    off = np.zeros_like(ref_mask)
    off[10:30, 50:70] = True  # M* on the right half, beyond the grown guide box's reach of the object
    single = tiny_pipe(image, mask, reference, ref_mask, align=False, seed=1)
    out = tiny_pipe(image, mask, reference, ref_mask, region=off, seed=1)
    assert out.reference_box == single.reference_box
    assert np.array_equal(np.asarray(out.image), np.asarray(single.image))
    assert any("lies off the reference object: the whole reference object guided" in n for n in out.notes), out.notes
    on = np.zeros_like(ref_mask)
    on[10:30, 10:30] = True
    inside = tiny_pipe(image, mask, reference, ref_mask, region=on, seed=1)
    assert inside.reference_box != single.reference_box and not any("lies off" in n for n in inside.notes)


def test_single_stage_and_oracle_modes(tiny_pipe, simple_inputs):
    image, mask, reference = simple_inputs
    single = tiny_pipe(image, mask, reference, align=False, seed=1)
    assert single.region is None and single.heatmap is None
    oracle = np.zeros((reference.height, reference.width), bool)
    oracle[10:30, 20:40] = True
    given = tiny_pipe(image, mask, reference, region=oracle, seed=1)
    assert np.array_equal(given.region, oracle)
    assert given.reference_box.x0 <= 20 and given.reference_box.x1 >= 40


def test_align_stage_alone(tiny_pipe, simple_inputs):
    image, mask, reference = simple_inputs
    res = tiny_pipe.align(image, mask, reference, alignment="attention")
    assert res.region.shape == (reference.height, reference.width) and res.region.any()
    g = tiny_pipe.model.cfg.grid_size
    assert res.raw_grid.shape == (g, g) and res.grid_region.sum() >= 1
    assert res.alignment_timestep == 0 and res.alignment_layer == tiny_pipe.model.cfg.alignment_layer
    res2 = tiny_pipe.align(image, mask, reference, alignment_timestep=500, alignment_layer=0, alignment="attention")
    assert res2.alignment_timestep == 500 and res2.alignment_layer == 0
    with pytest.warns(DeprecationWarning, match="'timestep' is deprecated"):
        res3 = tiny_pipe.align(image, mask, reference, timestep=500, layer=0, alignment="attention")
    assert np.array_equal(res3.raw_grid, res2.raw_grid)
    # align() takes the alignment by the name the pipeline's call takes it (it was method= only)
    with pytest.warns(DeprecationWarning, match="'method' is deprecated, use 'alignment'"):
        res4 = tiny_pipe.align(image, mask, reference, alignment_timestep=500, alignment_layer=0, method="attention")
    assert res4.method == "attention" and np.array_equal(res4.raw_grid, res2.raw_grid)


def test_alignment_threshold_comes_from_the_config(tiny_pipe, simple_inputs, monkeypatch):
    """A.4's threshold is a model setting: the pipeline's default follows it, an argument overrides it."""
    from refine_by_align.pipelines.alignment import clean_correspondence

    image, mask, reference = simple_inputs
    raw = tiny_pipe.align(image, mask, reference, alignment="attention").raw_grid
    for thr in (0.2, 0.9):
        monkeypatch.setattr(tiny_pipe.model.cfg, "alignment_threshold", thr)
        res = tiny_pipe.align(image, mask, reference, alignment="attention")
        assert np.array_equal(res.grid_region, clean_correspondence(raw, threshold=thr)[0])
    assert clean_correspondence(raw, 0.2)[0].sum() > clean_correspondence(raw, 0.9)[0].sum()  # the setting matters
    assert np.array_equal(tiny_pipe.align(image, mask, reference, threshold=0.2, alignment="attention").grid_region, clean_correspondence(raw, 0.2)[0])


def test_reference_mask_restricts_correspondence(tiny_pipe, simple_inputs):
    """M* stays on the given reference object: Algorithm 1's region (noise inputs, no field), and
    the dense field's pushed mask where the object's outline cuts through it (a textured pair SIFT
    matches; the object the reference's left part, ending in the middle of the pushed region)."""
    image, mask, reference = simple_inputs
    ref_mask = np.zeros((reference.height, reference.width), bool)
    ref_mask[20:60, 10:50] = True
    res = tiny_pipe.align(image, mask, reference, ref_mask)
    assert not res.region[~ref_mask].any()

    tiny_pipe.set_matcher(enabled=False)  # (SIFT alone: no dependence on ../shared)
    try:
        img, m, ref = _textured_pair()
        whole = tiny_pipe.align(Image.fromarray(img), m, Image.fromarray(ref))
        assert whole.method == "dense" and whole.region.any(), whole.info
        cols = np.nonzero(whole.region.any(0))[0]
        cut = np.zeros(ref.shape[:2], bool)
        cut[:, : (cols.min() + cols.max()) // 2] = True  # (the object ends halfway across the pushed region)
        part = tiny_pipe.align(Image.fromarray(img), m, Image.fromarray(ref), cut)
        assert part.method == "dense" and part.region.any(), part.info
        assert not part.region[~cut].any() and whole.region[~cut].any()
    finally:
        tiny_pipe._aliked = None


def test_input_modes_are_accepted(tiny_pipe, simple_inputs):
    image, mask, reference = simple_inputs
    for mode, out_mode in (("RGBA", "RGBA"), ("L", "L"), ("P", "RGB"), ("LA", "LA")):
        given = image.convert(mode)
        out = tiny_pipe(given, Image.fromarray(mask.astype(np.uint8) * 255), reference.convert(mode), seed=0)
        assert out.image.size == image.size and out.image.mode == out_mode
        # outside the dilated mask the picture is the given one, in its own mode (alpha included)
        far = ~ndimage.binary_dilation(mask, iterations=8)
        assert np.array_equal(np.asarray(out.image)[far], np.asarray(given.convert(out_mode))[far])
        assert not np.array_equal(np.asarray(out.image)[mask], np.asarray(given.convert(out_mode))[mask])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_inference_steps": 0}, "steps"),
        ({"num_inference_steps": -3}, "steps"),
        ({"guidance_scale": float("nan")}, "guidance"),
        ({"guidance_scale": -1.0}, "guidance"),
    ],
)
def test_meaningless_settings_are_rejected(tiny_pipe, simple_inputs, kwargs, message):
    image, mask, reference = simple_inputs
    with pytest.raises(InputError, match=message):
        tiny_pipe(image, mask, reference, **kwargs)


def test_bad_masks_are_rejected(tiny_pipe, simple_inputs):
    image, mask, reference = simple_inputs
    with pytest.raises(InputError, match="empty"):
        tiny_pipe(image, np.zeros_like(mask), reference)
    with pytest.raises(InputError, match="whole image"):
        tiny_pipe(image, np.ones_like(mask), reference)
    with pytest.raises(InputError, match="does not match"):
        tiny_pipe(image, mask[:-1], reference)
    with pytest.raises(InputError, match="reference mask is empty"):
        tiny_pipe(image, mask, reference, np.zeros((reference.height, reference.width), bool))


def test_save_and_reload_pipeline(tiny_pipe, simple_inputs, tmp_path):
    from refine_by_align.pipelines.pipeline import RefineByAlignPipeline

    image, mask, reference = simple_inputs
    tiny_pipe.save_pretrained(tmp_path)
    pipe2 = RefineByAlignPipeline.from_pretrained(str(tmp_path))
    pipe2.set_progress_bar_config(disable=True)
    assert not pipe2.random_weights
    a = np.asarray(tiny_pipe(image, mask, reference, seed=2).image)
    b = np.asarray(pipe2(image, mask, reference, seed=2).image)
    assert np.array_equal(a, b)


def test_bf16_weights_sample_in_float32_and_stay_close(simple_inputs):
    """torch_dtype=bfloat16 casts the weights; the sampler state stays float32 and the result
    stays close to the float32 pipeline's (same seed)."""
    import torch

    from refine_by_align.pipelines.pipeline import RefineByAlignPipeline

    image, mask, reference = simple_inputs
    p32 = RefineByAlignPipeline.from_pretrained("tiny", seed=0)
    p16 = RefineByAlignPipeline.from_pretrained("tiny", seed=0, torch_dtype=torch.bfloat16)
    assert p16.model.dtype == torch.bfloat16
    a = np.asarray(p32(image, mask, reference, seed=0, align=False).image).astype(int)
    b = np.asarray(p16(image, mask, reference, seed=0, align=False).image).astype(int)
    assert a.shape == b.shape
    assert np.abs(a - b)[mask].mean() < 8  # mean abs difference in the hole, 0-255 scale


def test_compile_falls_back_to_eager_when_the_compiled_unet_fails(tiny_pipe, simple_inputs, caplog):
    image, mask, reference = simple_inputs
    want = np.asarray(tiny_pipe(image, mask, reference, seed=2).image)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    tiny_pipe._compiled = {"unet": broken}
    try:
        got = np.asarray(tiny_pipe(image, mask, reference, seed=2).image)
        assert tiny_pipe._compiled["unet"] is None  # dropped for good after the first failure
    finally:
        tiny_pipe._compiled = {}
    assert np.array_equal(got, want)
    assert "compiled unet failed" in caplog.text and "falling back to eager" in caplog.text


def test_num_samples_averages_a_batch_of_samples(tiny_pipe, simple_inputs):
    image, mask, reference = simple_inputs
    one = np.asarray(tiny_pipe(image, mask, reference, seed=5).image).astype(float)
    four = np.asarray(tiny_pipe(image, mask, reference, seed=5, num_samples=4).image).astype(float)
    again = np.asarray(tiny_pipe(image, mask, reference, seed=5, num_samples=4).image).astype(float)
    assert np.array_equal(four, again)
    assert not np.array_equal(one, four)
    outside = ~_dilated(mask, tiny_pipe.model.cfg.paste_dilate)
    assert np.array_equal(four[outside], np.asarray(image).astype(float)[outside])
    # the mean of 4 samples varies less across seeds than single samples do
    four_b = np.asarray(tiny_pipe(image, mask, reference, seed=6, num_samples=4).image).astype(float)
    one_b = np.asarray(tiny_pipe(image, mask, reference, seed=6).image).astype(float)
    assert np.abs(four - four_b)[mask].mean() < np.abs(one - one_b)[mask].mean()
    for bad in (0, 65, 1.5, True):
        with pytest.raises(InputError, match="num_samples"):
            tiny_pipe(image, mask, reference, num_samples=bad)


def test_device_is_picked_automatically_and_a_missing_gpu_is_a_clear_error():
    import torch

    from refine_by_align.pipelines.pipeline import RefineByAlignPipeline, resolve_device

    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == want and resolve_device("auto").type == want
    assert resolve_device("cpu").type == "cpu"
    pipe = RefineByAlignPipeline.from_pretrained("tiny", device="cpu")
    assert pipe._weight().device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_latent_model_pipeline_runs_channels_last_and_compile_falls_back(tmp_path, simple_inputs, monkeypatch):
    """A latent-space (vae-tiny) model saved and reloaded: weights stored channels-last; a
    torch.compile that raises leaves the pipeline eager and working: the refine keeps the pixels
    outside the dilated mask, draws the decoded crop in the mask (not a flat value) and gives the
    same picture again for the same seed."""
    import torch

    from refine_by_align.config import ModelConfig, get_config
    from refine_by_align.models.refiner import RefineByAlignModel
    from refine_by_align.pipelines.pipeline import RefineByAlignPipeline

    cfg = ModelConfig.from_dict({**get_config("tiny").to_dict(), "latent": "vae-tiny", "resolution": 32, "zoom_min_size": 32})
    torch.manual_seed(0)
    RefineByAlignModel.from_model_config(cfg).save_pretrained(tmp_path)
    pipe = RefineByAlignPipeline.from_pretrained(str(tmp_path), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    w = pipe.model.unet.conv_in.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    assert pipe.enable_compile() is False and pipe._compiled == {}
    image, mask, reference = simple_inputs
    out = pipe(image, mask, reference, seed=0, num_inference_steps=2)
    a, given = np.asarray(out.image), np.asarray(image)
    assert a.shape == given.shape
    far = ~ndimage.binary_dilation(mask, iterations=8)
    assert np.array_equal(a[far], given[far])  # (outside the dilated mask: the given pixels)
    assert a[mask].astype(np.float64).std() > 1.0  # (the decoded crop: a picture, not one flat value such as a zeroed decode)
    assert np.array_equal(np.asarray(pipe(image, mask, reference, seed=0, num_inference_steps=2).image), a)


def test_latent_model_uses_compiled_autoencoder_parts_and_each_falls_back_alone(tmp_path, simple_inputs, caplog):
    """enable_compile's autoencoder stand-ins: a working one is called (with the same result as
    eager), a failing one is dropped alone, with a warning, and the refine still matches eager."""
    import torch

    from refine_by_align.config import ModelConfig, get_config
    from refine_by_align.models.refiner import RefineByAlignModel
    from refine_by_align.pipelines.pipeline import RefineByAlignPipeline

    cfg = ModelConfig.from_dict({**get_config("tiny").to_dict(), "latent": "vae-tiny", "resolution": 32, "zoom_min_size": 32})
    torch.manual_seed(0)
    RefineByAlignModel.from_model_config(cfg).save_pretrained(tmp_path)
    pipe = RefineByAlignPipeline.from_pretrained(str(tmp_path), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    image, mask, reference = simple_inputs
    want = np.asarray(pipe(image, mask, reference, seed=0, num_inference_steps=2).image)
    calls = []

    def decode(z):
        calls.append(tuple(z.shape))
        return pipe.model.vae.decode(z)

    def broken(*args, **kwargs):
        raise RuntimeError("inductor: no C++ compiler")

    pipe._compiled = {"encode": broken, "decode": decode}
    got = np.asarray(pipe(image, mask, reference, seed=0, num_inference_steps=2).image)
    assert np.array_equal(got, want)
    assert calls and pipe._compiled["encode"] is None and pipe._compiled["decode"] is decode
    assert "compiled encode failed" in caplog.text


def test_an_error_outside_the_compiled_call_propagates_and_keeps_it(tiny_pipe):
    calls = []

    def compiled(x):
        calls.append(x)
        return x

    tiny_pipe._compiled = {"unet": compiled}
    try:

        def run(fn):
            if fn is None:
                return "eager"
            fn(1)
            raise ValueError("bad input, not a compile problem")

        with pytest.raises(ValueError, match="bad input"):
            tiny_pipe._compiled_or_eager("unet", run)
        assert tiny_pipe._compiled["unet"] is compiled and calls == [1]
        assert tiny_pipe._compiled_or_eager("unet", lambda fn: fn(2)) == 2
    finally:
        tiny_pipe._compiled = {}


def test_samplers_run_on_the_models_noise_schedule():
    """`paper` is on Stable Diffusion's schedule (scaled_linear, betas 0.00085-0.012), so SD weights
    fit it: alpha_bar is 0.0047 at t = 999 (diffusers' default betas would give 0.0007)."""
    from types import SimpleNamespace

    import torch
    from diffusers import DDPMScheduler

    from refine_by_align.config import get_config
    from refine_by_align.pipelines.pipeline import make_scheduler

    paper = get_config("paper")
    for cfg in (paper, get_config("default")):
        sampler = make_scheduler(SimpleNamespace(cfg=cfg))
        train = DDPMScheduler(**cfg.noise_schedule())
        assert torch.allclose(sampler.alphas_cumprod, train.alphas_cumprod)
        assert sampler.config.prediction_type == cfg.prediction_type
    a = DDPMScheduler(**paper.noise_schedule()).alphas_cumprod
    assert float(a[-1]) == pytest.approx(0.00466, abs=2e-5) and float(a[100]) == pytest.approx(0.894, abs=1e-3)


def test_one_pixel_space_step_is_the_clipped_x0_prediction_from_pure_noise():
    """The shipped default samples with one DDIM step (config.py, `_default`): with trailing
    timesteps that step is t = 999 and lands on alpha_bar = 1, so it returns the model's
    x0-prediction from pure noise, clipped to [-1, 1] (v-prediction: x0 = sqrt(ab) x_t -
    sqrt(1 - ab) v), the estimate of the posterior mean the K draws are then averaged over."""
    from types import SimpleNamespace

    import torch

    from refine_by_align.config import get_config
    from refine_by_align.pipelines.pipeline import make_scheduler

    cfg = get_config("default")
    assert cfg.default_steps == 1 and cfg.latent == "pixel" and cfg.prediction_type == "v_prediction"
    sampler = make_scheduler(SimpleNamespace(cfg=cfg))
    sampler.set_timesteps(1)
    assert sampler.timesteps.tolist() == [cfg.num_train_timesteps - 1]
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 3, 8, 8, generator=g), 1.5 * torch.randn(2, 3, 8, 8, generator=g)
    ab = sampler.alphas_cumprod[-1]
    expected = (ab.sqrt() * x - (1 - ab).sqrt() * v).clamp(-1, 1)
    got = sampler.step(v, sampler.timesteps[0], x).prev_sample
    assert torch.allclose(got, expected, atol=1e-6)
    assert (got.abs() == 1).any()  # the clip is reached: the test sees it


def _textured_pair():
    """(image, mask, reference): a 160 px photo-like texture SIFT matches, its rotated and scaled
    copy as the reference, and a 20 x 30 mask in the middle."""
    rng = np.random.default_rng(0)
    h = w = 160
    image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 1.5)
    for _ in range(40):
        x, y = rng.integers(0, w - 16, 2)
        cv2.rectangle(image, (int(x), int(y)), (int(x + rng.integers(5, 16)), int(y + rng.integers(5, 16))), rng.integers(0, 256, 3).tolist(), -1)
    reference = cv2.warpPerspective(image, np.vstack([cv2.getRotationMatrix2D((80, 80), 10, 0.95), [0, 0, 1]]), (w, h))
    mask = np.zeros((h, w), bool)
    mask[70:90, 65:95] = True
    return image, mask, reference


def test_warp_input_model_redraws_over_the_warp_and_keeps_outside_pixels():
    """A tiny hole_fill="warp" model: the dense alignment's trusted warp pre-fills the hole and
    fills the trust channel, the model redraws the whole mask over it (the raw warp is not pasted
    over its output), and pixels outside the dilated mask stay bit-identical."""
    import dataclasses

    import torch

    from refine_by_align.config import get_config
    from refine_by_align.models.refiner import RefineByAlignModel
    from refine_by_align.pipelines.pipeline import RefineByAlignPipeline, make_scheduler

    image, mask, reference = _textured_pair()
    torch.manual_seed(0)
    model = RefineByAlignModel.from_model_config(dataclasses.replace(get_config("tiny"), hole_fill="warp", warp_channel=True), load_pretrained=False).eval()
    pipe = RefineByAlignPipeline(model=model, scheduler=make_scheduler(model))
    pipe.set_progress_bar_config(disable=True)
    seen = {}
    crop_inputs = pipe.crop_inputs

    def spy(p, with_sample=True, warp=None):
        out = crop_inputs(p, with_sample, warp)
        seen["trust"], seen["base"], seen["masked"] = out.trust, out.base, out.masked
        return out

    pipe.crop_inputs = spy
    out = pipe(Image.fromarray(image), mask, Image.fromarray(reference), matchers="sift", seed=0)
    assert out.alignment == "dense" and out.warp_fraction > 0.5, out.notes
    assert seen["trust"] is not None and seen["trust"].sum() > 0 and seen["base"] is not None
    assert set(seen["trust"].unique().tolist()) <= {0.0, 1.0} and seen["masked"].shape[1] == 4
    a = np.asarray(out.image)
    region = _dilated(mask, model.cfg.paste_dilate)
    assert np.array_equal(a[~region], image[~region])
    assert (a[mask] != image[mask]).any()
    # without the warp the same model runs on Telea alone (a zero trust channel)
    out2 = pipe(Image.fromarray(image), mask, Image.fromarray(reference), matchers="sift", seed=0, warp=False)
    assert seen["trust"] is None and not seen["masked"][:, 3:].any()
    assert np.array_equal(np.asarray(out2.image)[~region], image[~region])


def test_non_finite_model_output_is_one_clear_error_not_a_black_area(simple_inputs):
    """Weights that turn NaN after loading (the load-time check cannot see them): the refinement
    refuses to paste a non-finite result with a NonFiniteResultError (an InputError: one line, exit 2
    on the CLI, 422 on the server) instead of a RuntimeError or a black mask."""
    import torch

    from refine_by_align.pipelines.pipeline import NonFiniteResultError, RefineByAlignPipeline

    pipe = RefineByAlignPipeline.from_pretrained("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        pipe.model.unet.conv_out.bias.fill_(float("nan"))
    image, mask, reference = simple_inputs
    with pytest.raises(NonFiniteResultError, match="non-finite"):
        pipe(image, mask, reference, seed=0, align=False)
    assert issubclass(NonFiniteResultError, InputError)


def test_old_names_still_work_with_a_deprecation_warning(tiny_pipe, simple_inputs):
    """``correspondence=`` and ``.correspondence_mask`` / ``.correspondence_map`` are the old names
    of ``region=``, ``.region`` and ``.heatmap``: they work for one more release, with a warning."""
    image, mask, reference = simple_inputs
    oracle = np.zeros((reference.height, reference.width), bool)
    oracle[10:40, 10:40] = True
    with pytest.warns(DeprecationWarning, match="use 'region'"):
        old = tiny_pipe(image, mask, reference, correspondence=oracle, seed=1, num_inference_steps=2)
    new = tiny_pipe(image, mask, reference, region=oracle, seed=1, num_inference_steps=2)
    assert np.array_equal(np.asarray(old.image), np.asarray(new.image))
    with pytest.warns(DeprecationWarning, match=r"use \.region"):
        assert np.array_equal(old.correspondence_mask, new.region)
    with pytest.warns(DeprecationWarning, match=r"use \.heatmap"):
        assert old.correspondence_map is None


def test_model_correction_goes_on_the_configured_base_fill(simple_inputs, monkeypatch):
    """base_fill: the model sees its hole_fill prefill, and its correction is added to base_fill's
    full-resolution fill ("same": hole_fill's). The shipped config corrects a harmonic prefill and
    adds that to the mixed-local fill."""
    import dataclasses

    import torch

    import refine_by_align.pipelines.pipeline as P
    from refine_by_align.config import get_config
    from refine_by_align.models.refiner import RefineByAlignModel

    assert (get_config("default").hole_fill, get_config("default").base_fill) == ("harmonic", "mixed-local")
    with pytest.raises(ValueError, match="base_fill must be one of"):
        dataclasses.replace(get_config("tiny"), base_fill="zero").validate()
    used, outs = [], {}
    real = P.classical_fill
    monkeypatch.setattr(P, "classical_fill", lambda image, hole, name: used.append(name) or real(image, hole, name))
    image, mask, reference = simple_inputs
    for base in ("same", "fsr"):
        torch.manual_seed(0)
        model = RefineByAlignModel.from_model_config(dataclasses.replace(get_config("tiny"), hole_fill="harmonic", base_fill=base)).eval()
        pipe = P.RefineByAlignPipeline(model=model, scheduler=P.make_scheduler(model))
        pipe.set_progress_bar_config(disable=True)
        outs[base] = np.asarray(pipe(image, mask, reference, seed=0, num_inference_steps=2).image)
    assert used == ["harmonic", "fsr"]
    grown = _dilated(mask, 8)  # past the paste's dilation and feather (3 + 3 px)
    assert np.array_equal(outs["same"][~grown], outs["fsr"][~grown]) and np.array_equal(outs["fsr"][~grown], np.asarray(image)[~grown])
    assert not np.array_equal(outs["same"][mask], outs["fsr"][mask])


def test_fill_around_the_warp_keeps_its_pixels_and_is_cheap_where_the_model_barely_counts(simple_inputs):
    """The fill the model's correction goes on is computed on the whole picture (not the crop: FSR
    sees its context and its block grid as the baseline does) and cut to the crop. Where warps cover
    part of the mask it treats the fully trusted warp pixels as known and fills only the rest; where
    the model's share of every mask pixel is at most CHEAP_FILL_SHARE, it is the harmonic fill
    instead of the mixed one."""
    import dataclasses

    import torch

    import refine_by_align.pipelines.pipeline as P
    from refine_by_align.config import get_config
    from refine_by_align.fill import classical_fill, local_mixed_fill
    from refine_by_align.models.refiner import RefineByAlignModel
    from refine_by_align.pipelines.references import CombinedWarp

    torch.manual_seed(0)
    model = RefineByAlignModel.from_model_config(dataclasses.replace(get_config("tiny"), hole_fill="harmonic", base_fill="mixed")).eval()
    pipe = P.RefineByAlignPipeline(model=model, scheduler=P.make_scheduler(model))
    image, mask, reference = simple_inputs
    p = pipe.prepare(image, mask, reference)
    b = p.crop_box
    crop, m = p.image[b.y0 : b.y1, b.x0 : b.x1], p.mask[b.y0 : b.y1, b.x0 : b.x1]
    warp = np.full(crop.shape, 200, np.uint8)
    left = m.copy()
    left[:, left.shape[1] // 2 :] = False  # the warp is fully trusted on the mask's left half
    weight = np.where(left, 1.0, np.where(m, 0.5, 0.0)).astype(np.float32)
    combined = CombinedWarp(patch=warp, weight=weight, use=m.copy(), source=np.where(m, 0, -1).astype(np.int16))
    base = pipe._fill_around_warp(p, combined)
    assert np.array_equal(base[left], warp[left]) and np.array_equal(base[~m], crop[~m])
    window = (slice(b.y0, b.y1), slice(b.x0, b.x1))
    known, hole = p.image.copy(), p.mask.copy()  # filled on the whole picture, then cut to the crop
    known[window][left] = 200
    hole[window][left] = False
    assert np.array_equal(base, classical_fill(known, hole, "mixed")[window])
    assert pipe._base_fill(0.5) == "mixed" and pipe._base_fill(0.1) == "harmonic" and pipe._base_fill() == "mixed"
    combined.weight[m & ~left] = 0.95  # the model's share is at most 0.05 everywhere: the cheap fill
    assert np.array_equal(pipe._fill_around_warp(p, combined), classical_fill(known, hole, "harmonic")[window])
    none = CombinedWarp(patch=warp, weight=np.zeros_like(weight), use=np.zeros_like(m), source=np.full(m.shape, -1, np.int16))
    assert np.array_equal(pipe._fill_around_warp(p, none), classical_fill(p.image, p.mask, "mixed")[window])  # no warp: the whole mask

    # the shipped base fill, mixed-local: on the whole mask where no warp pixel is fully trusted;
    # on what fully trusted warp pixels leave, the local mix of FSR and the biharmonic fill alone
    model.cfg = dataclasses.replace(model.cfg, base_fill="mixed-local")
    assert pipe._base_fill() == "mixed-local" and pipe._base_fill(0.1) == "harmonic"
    assert np.array_equal(pipe._fill_around_warp(p, none), classical_fill(p.image, p.mask, "mixed-local")[window])
    combined.weight[m & ~left] = 0.5
    sliver = local_mixed_fill(known, hole, fills=("fsr", "biharmonic"))[window]
    assert np.array_equal(pipe._fill_around_warp(p, combined), sliver) and not np.array_equal(sliver, classical_fill(known, hole, "mixed-local")[window])
    partial = CombinedWarp(patch=warp, weight=np.where(m, 0.5, 0.0).astype(np.float32), use=m.copy(), source=np.where(m, 0, -1).astype(np.int16))
    assert np.array_equal(pipe._fill_around_warp(p, partial), classical_fill(p.image, p.mask, "mixed-local")[window])  # no pixel fully trusted


def test_one_sample_where_the_warps_leave_the_model_little_of_the_mask(simple_inputs, monkeypatch):
    """The model's default K samples are averaged where it draws a real share of the mask; where
    the mean over the mask of its squared share is at most CHEAP_FILL_SHARE squared (the warps give
    the rest), one sample is drawn. A caller's num_samples is always used, and a warp-input model
    keeps its K (it redraws the whole mask)."""
    import dataclasses

    import torch

    import refine_by_align.pipelines.pipeline as P
    from refine_by_align.config import get_config
    from refine_by_align.models.refiner import RefineByAlignModel
    from refine_by_align.pipelines.references import CombinedWarp

    torch.manual_seed(0)
    model = RefineByAlignModel.from_model_config(dataclasses.replace(get_config("tiny"), hole_fill="harmonic", default_samples=4, default_guidance=1.0)).eval()
    pipe = P.RefineByAlignPipeline(model=model, scheduler=P.make_scheduler(model))
    pipe.set_progress_bar_config(disable=True)
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True  # 100 mask pixels

    def k_for(weight_in_mask) -> int:
        weight = np.zeros(m.shape, np.float32)
        weight[m] = weight_in_mask
        combined = CombinedWarp(patch=np.zeros((20, 20, 3), np.uint8), weight=weight, use=m.copy(), source=np.zeros(m.shape, np.int16))
        return pipe._default_samples(4, combined, m)

    assert k_for(0.0) == 4  # no warp: the model draws everything
    assert k_for(0.95) == 1 and k_for(0.91) == 1  # under 10% of every pixel: mean square under 0.01
    assert k_for(0.85) == 4
    few = np.ones(100, np.float32)
    few[:1] = 0.0  # all of one pixel in a hundred
    assert k_for(few) == 1
    few[:2] = 0.0  # all of two
    assert k_for(few) == 4
    monkeypatch.setattr(pipe.model, "cfg", dataclasses.replace(pipe.model.cfg, hole_fill="warp"))
    assert k_for(0.95) == 4  # a warp-input model redraws the whole mask: its K stays
    monkeypatch.undo()

    # through the pipeline: the batch the U-Net sees
    seen = []
    real_step = P.RefineByAlignPipeline.step
    monkeypatch.setattr(P.RefineByAlignPipeline, "step", lambda self, x, *a, **kw: seen.append(x.shape[0]) or real_step(self, x, *a, **kw))
    image, mask, reference = simple_inputs
    pipe(image, mask, reference, seed=0, num_inference_steps=1, warp=False)
    pipe(image, mask, reference, seed=0, num_inference_steps=1, warp=False, num_samples=2)
    assert seen == [4, 2]
    monkeypatch.setattr(P.RefineByAlignPipeline, "_warps", staticmethod(lambda ps, results, image_box, mask_box, warp: (
        [None], CombinedWarp(patch=image_box.copy(), weight=np.where(mask_box, 0.95, 0.0).astype(np.float32), use=mask_box.copy(),
                             source=np.where(mask_box, 0, -1).astype(np.int16)), 0)))
    seen.clear()
    pipe(image, mask, reference, seed=0, num_inference_steps=1)
    pipe(image, mask, reference, seed=0, num_inference_steps=1, num_samples=3)
    assert seen == [1, 3]


def test_a_field_that_misses_its_own_matches_is_discounted_and_said(monkeypatch):
    """The pipeline blends a warp in at less weight where its field's fit misses its own matches
    (MISFIT_PX), none past the upper limit, and says so in a note; a well-fitting field is used as
    before."""
    import dataclasses

    import torch

    import refine_by_align.pipelines.alignment as A
    from refine_by_align.config import get_config
    from refine_by_align.models.refiner import RefineByAlignModel
    from refine_by_align.pipelines.correspondence import MISFIT_PX
    from refine_by_align.pipelines.pipeline import RefineByAlignPipeline, make_scheduler

    image, mask, reference = _textured_pair()
    torch.manual_seed(0)
    model = RefineByAlignModel.from_model_config(dataclasses.replace(get_config("tiny"), hole_fill="harmonic"), load_pretrained=False).eval()
    pipe = RefineByAlignPipeline(model=model, scheduler=make_scheduler(model))
    pipe.set_progress_bar_config(disable=True)

    def run(misfit=None):
        if misfit is not None:
            monkeypatch.setattr(A, "field_misfit", lambda fld, shape: misfit)
        out = pipe(Image.fromarray(image), mask, Image.fromarray(reference), matchers="sift", seed=0, num_inference_steps=1, num_samples=1)
        monkeypatch.undo()
        return out

    good = run()
    assert good.alignment == "dense" and good.warp_fraction > 0.5, good.notes
    assert good.info["misfit_px"] < MISFIT_PX[0] and not any("misses its own matches" in n for n in good.notes)
    lo, hi = MISFIT_PX
    half, none = run((lo + hi) / 2), run(hi + 1.0)
    assert abs(half.warp_fraction - good.warp_fraction / 2) < 0.02, (half.warp_fraction, good.warp_fraction)
    assert any("misses its own matches" in n and "at 50% of its trust" in n for n in half.notes), half.notes
    assert none.warp_fraction == 0.0 and any("misses its own matches" in n and "not used" in n for n in none.notes), none.notes


def test_a_reference_at_half_the_images_size_is_matched_scaled_up_and_said_so():
    """A reference photo at half the image's resolution: the dense alignment matches it scaled up
    to the image's size (alignment._with_reference_upscaled), its warp is trusted and pasted, M*
    is on the reference as given, the notes say it once, and pixels outside the dilated mask stay
    bit-identical; the same reference at the image's size says nothing of it."""
    import torch

    from refine_by_align.config import get_config
    from refine_by_align.models.refiner import RefineByAlignModel
    from refine_by_align.pipelines.pipeline import RefineByAlignPipeline, make_scheduler

    image, mask, reference = _textured_pair()
    small = cv2.resize(reference, (80, 80), interpolation=cv2.INTER_AREA)
    torch.manual_seed(0)
    model = RefineByAlignModel.from_model_config(get_config("tiny"), load_pretrained=False).eval()
    pipe = RefineByAlignPipeline(model=model, scheduler=make_scheduler(model))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(Image.fromarray(image), mask, Image.fromarray(small), matchers="sift", seed=0)
    assert out.alignment == "dense" and out.warp_fraction > 0.5, out.notes
    assert out.info["reference_scale"] == pytest.approx(2.0)
    assert out.region.shape == small.shape[:2] and out.region.any()
    said = [n for n in out.notes if "smaller than the image" in n]
    assert len(said) == 1 and "2.0x" in said[0], out.notes
    a = np.asarray(out.image)
    region = _dilated(mask, model.cfg.paste_dilate)
    assert np.array_equal(a[~region], image[~region])
    same = pipe(Image.fromarray(image), mask, Image.fromarray(reference), matchers="sift", seed=0)
    assert "reference_scale" not in same.info and not any("smaller than the image" in n for n in same.notes)
    # a reference ten times smaller is scaled up at most 4x: the note says the factor, not "to the image's size"
    tiny_ref = cv2.resize(reference, (16, 16), interpolation=cv2.INTER_AREA)
    capped = pipe(Image.fromarray(image), mask, Image.fromarray(tiny_ref), matchers="sift", seed=0)
    said = [n for n in capped.notes if "smaller than the image" in n]
    assert len(said) == 1 and "scaled up 4.0x" in said[0] and "the most it is scaled up" in said[0], capped.notes
