"""The Python API's inputs (a probe of the library as its README documents it): arrays where a
user passes them, masks read alike from arrays, pictures and ComfyUI, seeds as numpy integers,
one clear InputError naming the argument otherwise, and one pipeline shared by threads."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from refine_by_align.io import InputError


def _ref_mask():
    m = np.zeros((80, 72), bool)
    m[10:70, 8:60] = True
    return m


def test_masks_mean_the_same_as_arrays_of_any_kind(tiny_pipe, simple_inputs):
    """A uint8 or float reference mask crashed (``bitwise_and`` of uint8 into bool) or, without the
    alignment, was read as integer indices (a silently different picture); a soft float mask marked
    every pixel above 0 where the same levels as a picture mark those at half or more."""
    image, mask, reference = simple_inputs
    rm = _ref_mask()
    want = np.asarray(tiny_pipe(image, mask, reference, rm, num_inference_steps=1, seed=1).image)
    for other in (rm.astype(np.uint8), rm.astype(np.uint8) * 255, rm.astype(np.float32)):
        got = np.asarray(tiny_pipe(image, mask, reference, other, num_inference_steps=1, seed=1).image)
        assert np.array_equal(got, want), other.dtype
    got = np.asarray(tiny_pipe(image, mask, reference, rm.astype(np.uint8), num_inference_steps=1, seed=1, align=False).image)
    assert np.array_equal(got, np.asarray(tiny_pipe(image, mask, reference, rm, num_inference_steps=1, seed=1, align=False).image))
    soft = np.where(mask, 1.0, 0.0).astype(np.float32)
    soft[25:55, 35:75] = np.maximum(soft[25:55, 35:75], 0.3)  # a 0.3 halo around the stroke
    levels = Image.fromarray((soft * 255).round().astype(np.uint8), "L")
    a = tiny_pipe.prepare(image, soft, reference, rm).mask
    assert np.array_equal(a, tiny_pipe.prepare(image, levels, reference, rm).mask) and np.array_equal(a, mask)


def test_an_inverted_mask_or_a_photo_as_the_mask_is_refused(tiny_pipe, simple_inputs):
    """A mask marking most of the image (drawn black on white) would have the whole picture
    redrawn, and a colour picture given as the mask would have its bright parts read as the
    artifact: each is one InputError that says what is wrong; half the image is still a mask."""
    image, mask, reference = simple_inputs
    with pytest.raises(InputError, match=r"mask: the mask marks 95\.1% of the image.*is it inverted\?"):
        tiny_pipe.prepare(image, ~mask, reference)
    photo = np.asarray(image)[..., ::-1].copy()  # (a colour picture of the image's size)
    for given in (Image.fromarray(photo), photo):  # (a picture, or the same as an array)
        with pytest.raises(InputError, match="mask: .* neither dark nor bright, in [\\d,]+ colours: this looks like a photo, not a mask"):
            tiny_pipe.prepare(image, given, reference)
    # a wide soft brush, or a mask drawn at one middle level, has middle levels in a few colours: a mask
    yy, xx = np.mgrid[0:96, 0:128]
    soft = np.exp(-((xx - 50) ** 2 + (yy - 40) ** 2) / (2 * 30.0**2))
    brush = Image.fromarray(np.stack([(soft * 255).astype(np.uint8)] * 3, -1))
    assert tiny_pipe.prepare(image, brush, reference).mask.any()
    grey = np.zeros((96, 128, 3), np.uint8)
    grey[10:80, 10:70] = (100, 100, 100)  # (no pixel at half range: every nonzero one is marked)
    assert tiny_pipe.prepare(image, Image.fromarray(grey), reference).mask.sum() == 70 * 60
    half = np.zeros_like(mask)
    half[:, : mask.shape[1] // 2] = True  # (96 x 64 px: it fits the refinement's square)
    assert tiny_pipe.prepare(image, half, reference).mask.mean() == 0.5


def test_arrays_for_pictures_and_numpy_seeds(tiny_pipe, simple_inputs):
    image, mask, reference = simple_inputs
    want = np.asarray(tiny_pipe(image, mask, reference, num_inference_steps=1, seed=3).image)
    got = tiny_pipe(np.asarray(image), mask, np.asarray(reference), num_inference_steps=1, seed=np.int64(3))
    assert np.array_equal(np.asarray(got.image), want)
    two = tiny_pipe(image, mask, [np.asarray(reference), reference], num_inference_steps=1, seed=np.uint32(3))
    assert two.image.size == image.size
    assert tiny_pipe.align(np.asarray(image), mask, reference, seed=np.int32(0)).region.shape == (80, 72)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(image=np.zeros((96, 128, 3), np.float32)), "image: a float32 array; give 8-bit"),
        (dict(reference="photo.png"), "reference: expected a PIL image or an 8-bit (H, W, 3) array, got str"),
        (dict(mask=None), "mask: required"),
        (dict(mask=np.zeros((2, 96, 128), bool)), "mask: expected an (H, W) array, got shape (2, 96, 128)"),
        (dict(seed=1.5), "seed must be an integer in 0..2^63-1"),
        (dict(seed=2**64), "seed must be an integer in 0..2^63-1"),
        (dict(seed=-1), "seed must be an integer in 0..2^63-1"),
        (dict(num_inference_steps=0), "num_inference_steps must be an integer in 1..1000"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    ],
)
def test_bad_arguments_are_one_input_error_naming_them(tiny_pipe, simple_inputs, change, message):
    image, mask, reference = simple_inputs
    kw = dict(image=image, mask=mask, reference=reference, num_inference_steps=1, seed=0) | change
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("^", r"\^").replace(".", r"\.")):
        tiny_pipe(**kw)


def test_one_pipeline_shared_by_threads_gives_each_call_its_own_result(tiny_pipe, simple_inputs):
    """Calls from several threads take turns (the scheduler's timesteps are the pipeline's state:
    with other step counts, threads sharing a pipeline got wrong pixels, silently)."""
    image, mask, reference = simple_inputs
    steps = [1, 4, 2, 3]
    alone = [np.asarray(tiny_pipe(image, mask, reference, num_inference_steps=s, seed=0, warp=False).image) for s in steps]
    results = [None] * len(steps)

    def run(i):
        results[i] = np.asarray(tiny_pipe(image, mask, reference, num_inference_steps=steps[i], seed=0, warp=False).image)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(steps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(np.array_equal(r, a) for r, a in zip(results, alone))


def test_detect_refuses_float_arrays(simple_inputs):
    """0..1 float pictures were cast to uint8 (black) and the detection said only 'no consistent field'."""
    from refine_by_align.pipelines.detect import detect

    image, _, reference = simple_inputs
    with pytest.raises(InputError, match="image: a float64 array; give 8-bit"):
        detect(np.asarray(image) / 255.0, np.asarray(reference))


def test_comfyui_refuses_values_outside_0_1_and_nan():
    from refine_by_align.comfyui.nodes import _images, _masks

    good = torch.rand(1, 16, 16, 3)
    assert _images(good, "image").shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match=r"image: values must be in 0\.\.1 \(ComfyUI's IMAGE and MASK\), got 0\.\.255"):
        _images(torch.cat([torch.zeros(1, 1, 16, 3), torch.full((1, 15, 16, 3), 255.0)], 1), "image")
    bad = good.clone()
    bad[0, 3, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="image: 1 values are NaN or infinite"):
        _images(bad, "image")
    with pytest.raises(ValueError, match="mask: values must be in 0..1"):
        _masks(torch.full((1, 16, 16), -1.0), "mask")


@pytest.mark.parametrize("kw, message", [
    (dict(device="bogus"), "device 'bogus' is not a device"),
    (dict(dtype="float16"), "dtype 'float16': give a floating-point torch dtype"),
    (dict(dtype=torch.int8), "give a floating-point torch dtype"),
])
def test_load_pipeline_names_a_bad_device_or_dtype(kw, message):
    """These were raw torch errors ("Invalid device string: 'float16'")."""
    from refine_by_align.loading import load_pipeline

    with pytest.raises(InputError, match=message):
        load_pipeline("tiny", **kw)


@pytest.mark.parametrize("kw, message", [(dict(erode_px=10000), "erode_px must be an integer in 0..64"), (dict(max_side=0), "max_side must be None or an integer of at least 64")])
def test_detect_bounds_its_sizes(simple_inputs, kw, message):
    """``erode_px=10000`` ran for minutes; ``max_side=0`` answered "no consistent field"."""
    from refine_by_align.pipelines.detect import detect

    image, _, reference = simple_inputs
    with pytest.raises(InputError, match=message):
        detect(image, reference, **kw)
