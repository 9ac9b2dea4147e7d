"""The ComfyUI nodes (issue 15 part 3), called directly with tensors in ComfyUI's layouts: IMAGE
(B, H, W, C) float32 in [0, 1], MASK (B, H, W). ComfyUI itself is not needed."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import refine_by_align
from refine_by_align import comfyui
from refine_by_align.comfyui import nodes

BADGE = Path(refine_by_align.__file__).parent / "demo" / "examples" / "badge"


def _image(name: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(BADGE / name).convert("RGB"), dtype=np.float32) / 255.0)[None]


def _mask(name: str) -> torch.Tensor:
    return torch.from_numpy((np.asarray(Image.open(BADGE / name).convert("L")) > 127).astype(np.float32))[None]


@pytest.fixture(scope="module")
def badge():
    return _image("image.png"), _mask("mask.png"), _image("reference.png"), _mask("reference_mask.png")


def test_mappings_and_declarations():
    assert set(comfyui.NODE_CLASS_MAPPINGS) == set(comfyui.NODE_DISPLAY_NAME_MAPPINGS)
    assert {"RefineByAlignRefine", "RefineByAlignAlign", "RefineByAlignDetect"} <= set(comfyui.NODE_CLASS_MAPPINGS)
    for key, cls in comfyui.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert "required" in spec and isinstance(spec["required"], dict)
        assert spec["required"]["image"] == ("IMAGE",) and spec["required"]["reference"] == ("IMAGE",)
        assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
        assert callable(getattr(cls(), cls.FUNCTION))
        assert isinstance(cls.CATEGORY, str) and cls.CATEGORY
        assert isinstance(comfyui.NODE_DISPLAY_NAME_MAPPINGS[key], str)
    assert comfyui.NODE_CLASS_MAPPINGS["RefineByAlignRefine"].RETURN_TYPES == ("IMAGE",)
    assert comfyui.NODE_CLASS_MAPPINGS["RefineByAlignAlign"].RETURN_TYPES == ("MASK", "IMAGE")
    req = comfyui.NODE_CLASS_MAPPINGS["RefineByAlignRefine"].INPUT_TYPES()["required"]
    assert req["seed"][0] == "INT" and req["steps"][0] == "INT"
    assert req["steps"][1]["default"] == 0 and req["steps"][1]["min"] == 0  # 0: the model's own default


def test_refine_steps_zero_is_the_models_default_and_others_are_passed_on(badge, monkeypatch):
    """The Refine node's steps: 0 (its default) leaves the sampling to the model's config (None to
    the pipeline, as the CLI does without --steps); any other value is passed on as given."""
    image, mask, reference, _ = badge
    real = nodes.get_pipeline("default")
    seen = []

    class Recording:
        model = real.model

        def __call__(self, *args, **kwargs):
            seen.append(kwargs["num_inference_steps"])
            return real(*args, **kwargs)

        def prepare_references(self, *args, **kwargs):  # (the node checks every item first)
            return real.prepare_references(*args, **kwargs)

    monkeypatch.setattr(nodes, "get_pipeline", lambda model: Recording())
    nodes.RefineByAlignRefine().refine(image, mask, reference, seed=0)
    nodes.RefineByAlignRefine().refine(image, mask, reference, seed=0, steps=3)
    assert seen == [None, 3]


def test_refine_badge_batch(badge):
    image, mask, reference, reference_mask = badge
    # a batch of two images (the second shifted in colour), one reference broadcast to both
    batch = torch.cat([image, (image * 0.9).clamp(0, 1)])
    masks = torch.cat([mask, mask])
    (out,) = nodes.RefineByAlignRefine().refine(batch, masks, reference, seed=0, steps=2, reference_mask=reference_mask)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == batch.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 and torch.isfinite(out).all()
    m = mask[0].numpy().astype(np.uint8)
    grown = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (13, 13))).astype(bool)
    outside = torch.from_numpy(~grown)
    for i in range(2):
        assert torch.equal(out[i][outside], batch[i][outside])  # exact float values outside the dilated mask
        assert not torch.equal(out[i], batch[i])  # and the masked part was redrawn
    # the shipped example is repaired (with the ALIKED matcher; SIFT alone does not repair it, see the
    # README): closer to the target inside the mask than the input
    if not getattr(nodes.get_pipeline("default"), "_aliked", None):
        return
    target = _image("target.png")[0]
    inside = mask[0].bool()
    err_in = float(((image[0] - target)[inside] ** 2).mean())
    err_out = float(((out[0] - target)[inside] ** 2).mean())
    assert err_out < err_in


def test_refine_empty_mask_passes_through(badge):
    image, mask, reference, _ = badge
    (out,) = nodes.RefineByAlignRefine().refine(image, torch.zeros_like(mask), reference, seed=0, steps=2)
    assert torch.equal(out, image)


def test_align_badge(badge):
    image, mask, reference, reference_mask = badge
    region, heat = nodes.RefineByAlignAlign().align(image, mask, reference, seed=0, reference_mask=reference_mask)
    assert region.shape == reference.shape[:3] and region.dtype == torch.float32
    assert set(torch.unique(region).tolist()) <= {0.0, 1.0} and region.sum() > 0
    assert heat.shape == reference.shape and heat.dtype == torch.float32
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0
    # M* lies on the reference object
    assert float(region[0][reference_mask[0] < 0.5].sum()) <= 0.05 * float(region.sum())


def test_detect_badge(badge):
    image, mask, reference, reference_mask = badge
    masks, heat = nodes.RefineByAlignDetect().detect(torch.cat([image, image]), reference, reference_mask=reference_mask)
    assert masks.shape == (2, *image.shape[1:3]) and masks.dtype == torch.float32
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    assert heat.shape == (2, *image.shape[1:]) and heat.dtype == torch.float32
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0
    assert torch.equal(masks[0], masks[1])  # the same input gives the same proposal
    with pytest.raises(ValueError):
        nodes.RefineByAlignDetect().detect(image, reference, reference_mask=reference_mask[:, :-3])
    with pytest.raises(ValueError):
        nodes.RefineByAlignDetect().detect(image, torch.cat([reference] * 3))


def test_pipeline_cached(badge):
    assert nodes.get_pipeline("default") is nodes.get_pipeline("default")


@pytest.mark.parametrize(
    "which, bad",
    [
        ("mask", lambda t: t[:, :-1, :]),  # one row short
        ("mask", lambda t: t[..., None].expand(-1, -1, -1, 3)),  # (B, H, W, 3) is not a MASK
        ("mask", lambda t: torch.cat([t, t, t])),  # batch 3 against 1 image
        ("image", lambda t: t[..., :2]),  # 2 channels
        ("image", lambda t: t.permute(0, 3, 1, 2)),  # (B, C, H, W): a torch layout, not ComfyUI's
        ("reference_mask", lambda t: t[:, :, :-5]),
        ("reference", lambda t: torch.cat([t, t])),  # batch 2 against 1 image
        ("mask", lambda t: t.numpy()),  # not a tensor
    ],
)
def test_wrong_shapes_raise(badge, which, bad):
    image, mask, reference, reference_mask = badge
    args = dict(image=image, mask=mask, reference=reference, reference_mask=reference_mask)
    args[which] = bad(args[which])
    for node, call in ((nodes.RefineByAlignRefine(), "refine"), (nodes.RefineByAlignAlign(), "align")):
        with pytest.raises(ValueError):
            getattr(node, call)(seed=0, **args)


def test_folder_loads_under_another_name(tmp_path):
    """ComfyUI imports a custom-node folder by its file path under the folder's name."""
    import importlib.util
    import sys

    link = tmp_path / "comfyui_refine_by_align"
    link.symlink_to(Path(comfyui.__file__).parent, target_is_directory=True)
    spec = importlib.util.spec_from_file_location("comfyui_refine_by_align", link / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_refine_by_align"] = module
    try:
        spec.loader.exec_module(module)
        assert module.NODE_CLASS_MAPPINGS is comfyui.NODE_CLASS_MAPPINGS
    finally:
        del sys.modules["comfyui_refine_by_align"]


CAN = BADGE.parent / "can"


class _Recorder:
    """Stands in for the pipeline: keeps what it was given, darkens the masked pixels."""

    class model:
        class cfg:
            paste_dilate = 3

    def __init__(self):
        self.calls = []

    def prepare_references(self, *args, **kwargs):  # (the node checks every item first: nothing to check here)
        return []

    def __call__(self, image, mask, reference, reference_mask=None, **kw):
        from types import SimpleNamespace

        self.calls.append((reference, reference_mask))
        arr = np.asarray(image).copy()
        arr[mask] = arr[mask] // 2
        return SimpleNamespace(image=Image.fromarray(arr))


def test_refine_takes_more_references_as_lists(badge, monkeypatch):
    image, mask, reference, reference_mask = badge
    spec = nodes.RefineByAlignRefine.INPUT_TYPES()["optional"]
    assert spec["reference_2"][0] == "IMAGE" and spec["reference_3"][0] == "IMAGE"
    assert spec["reference_mask_2"] == ("MASK",) and spec["reference_mask_3"] == ("MASK",)
    pipe = _Recorder()
    monkeypatch.setattr(nodes, "get_pipeline", lambda name="default": pipe)
    batch = torch.cat([image, image.flip(2)])
    second = torch.cat([reference, reference.flip(2)])  # one per image
    third = torch.rand(1, 50, 40, 3)  # one for both
    (out,) = nodes.RefineByAlignRefine().refine(batch, mask, reference, reference_mask=reference_mask, reference_2=second,
                                                reference_3=third, reference_mask_3=torch.ones(1, 50, 40))
    assert out.shape == batch.shape and len(pipe.calls) == 2
    for i, (refs, masks) in enumerate(pipe.calls):
        assert [r.size for r in refs] == [(reference.shape[2], reference.shape[1])] * 2 + [(40, 50)]
        assert masks[0].shape == reference_mask.shape[1:] and masks[1] is None and masks[2].all()
        assert np.array_equal(np.asarray(refs[1]), nodes.to_uint8(second[i]))
    # one reference: the pipeline gets one image, as always
    pipe.calls.clear()
    nodes.RefineByAlignRefine().refine(image, mask, reference)
    assert isinstance(pipe.calls[0][0], Image.Image) and pipe.calls[0][1] is None
    # reference_3 alone (no reference_2) is the second reference
    pipe.calls.clear()
    nodes.RefineByAlignRefine().refine(image, mask, reference, reference_3=third)
    assert len(pipe.calls[0][0]) == 2 and pipe.calls[0][1] == [None, None]


@pytest.mark.parametrize("more, message", [
    (lambda r, m: {"reference_mask_2": m}, "reference_mask_2 is connected but reference_2 is not"),
    (lambda r, m: {"reference_2": r, "reference_mask_2": m[:, :-4]}, "reference_mask_2 is"),
    (lambda r, m: {"reference_3": torch.cat([r, r, r])}, "reference_3 has a batch of 3"),
    (lambda r, m: {"reference_2": r[..., :2]}, "reference_2: expected an IMAGE tensor"),
])
def test_more_references_wrong_inputs_raise(badge, monkeypatch, more, message):
    image, mask, reference, reference_mask = badge
    monkeypatch.setattr(nodes, "get_pipeline", lambda name="default": pytest.fail("the pipeline was loaded"))
    with pytest.raises(ValueError, match=message):
        nodes.RefineByAlignRefine().refine(image, mask, reference, **more(reference, reference_mask))


def test_refine_with_a_distractor_and_the_right_reference(badge):
    """The real pipeline: the can's photo (a distractor) first, the badge's own second."""
    image, mask, reference, reference_mask = badge
    can = torch.from_numpy(np.asarray(Image.open(CAN / "reference.png").convert("RGB"), dtype=np.float32) / 255.0)[None]
    (out,) = nodes.RefineByAlignRefine().refine(image, mask, can, seed=0, steps=2, reference_2=reference,
                                                reference_mask_2=reference_mask)
    assert out.shape == image.shape and torch.isfinite(out).all()
    grown = cv2.dilate(mask[0].numpy().astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (13, 13))).astype(bool)
    outside = torch.from_numpy(~grown)
    assert torch.equal(out[0][outside], image[0][outside]) and not torch.equal(out, image)


def test_mask_levels_read_as_a_mask_file_is(badge):
    """A MASK is cut at 0.5, as a mask file at half range: a feathered edge under it does not
    count; a faint mask with nothing at 0.5 (a soft brush at low strength) marks its nonzero pixels
    instead of being an empty mask that returns the image unchanged."""
    _, mask, _, _ = badge
    hard = mask[0].numpy() > 0.5
    feathered = torch.from_numpy(cv2.GaussianBlur(mask[0].numpy(), (0, 0), 2.0))
    assert np.array_equal(nodes.to_bool(feathered), feathered.numpy() >= 0.5)
    assert not np.array_equal(nodes.to_bool(feathered), feathered.numpy() > 0)  # the feather's tail is not drawn
    assert np.array_equal(nodes.to_bool(mask[0] * 0.3), hard)
    assert not nodes.to_bool(torch.zeros(4, 4)).any()


def test_a_bad_item_of_a_batch_is_named_before_any_item_is_refined(monkeypatch):
    """A batch whose third mask covers the whole picture: the first two were refined, then the
    error came without saying which item. Now every item is checked first and the error says it."""
    import torch

    image = torch.rand(3, 48, 64, 3)
    mask = torch.zeros(3, 48, 64)
    mask[:, 10:20, 10:30] = 1.0
    mask[2] = 1.0  # the whole picture
    reference = torch.rand(1, 40, 40, 3)
    calls = []
    real = nodes.get_pipeline("tiny")

    class Counting:
        model = real.model

        def __call__(self, *args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        def prepare_references(self, *args, **kwargs):
            return real.prepare_references(*args, **kwargs)

    monkeypatch.setattr(nodes, "get_pipeline", lambda model: Counting())
    with pytest.raises(ValueError, match="item 3 of 3: mask: mask covers the whole image"):
        nodes.RefineByAlignRefine().refine(image, mask, reference, seed=0, steps=1)
    assert not calls
    with pytest.raises(ValueError, match="item 3 of 3: mask"):
        nodes.RefineByAlignAlign().align(image, mask, reference)
