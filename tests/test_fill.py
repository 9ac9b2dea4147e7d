"""Hole filling of the U-Net's masked-image input (fill.py)."""

import numpy as np
import pytest
import torch

from refine_by_align.fill import fill_hole


def _inputs():
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    img = torch.stack([xx / 15, yy / 15, torch.full_like(xx, 0.5)])[None].repeat(2, 1, 1, 1)  # smooth ramps
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, 5:10, 6:11] = 1
    return img, mask


def test_zero_fill_blanks_only_the_hole():
    img, mask = _inputs()
    out = fill_hole(img, mask, "zero")
    assert (out[0, :, 5:10, 6:11] == 0).all()
    assert torch.equal(out[mask.expand_as(out) == 0], img[mask.expand_as(img) == 0])


def test_telea_continues_a_smooth_ramp_and_keeps_the_rest():
    img, mask = _inputs()
    out = fill_hole(img, mask, "telea")
    outside = mask.expand_as(out) == 0
    assert torch.equal(out[outside], img[outside])  # bit-identical outside the hole
    err = (out[0, :, 5:10, 6:11] - img[0, :, 5:10, 6:11]).abs().max()
    assert err < 0.1  # a ramp is continued within 10% (zero fill would be off by up to 0.67)
    assert torch.equal(out[1], img[1])  # no hole: unchanged


def test_bad_method_and_shapes():
    img, mask = _inputs()
    with pytest.raises(ValueError, match="hole fill"):
        fill_hole(img, mask, "mean")
    with pytest.raises(ValueError, match="fill_hole wants"):
        fill_hole(img[:, :1], mask, "telea")
