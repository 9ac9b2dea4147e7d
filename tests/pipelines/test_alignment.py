"""Eq. 5 + A.4 recover a correspondence planted in the attention."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from refine_by_align.models.attention import AttentionStore, RecordingAttnProcessor
from refine_by_align.pipelines.alignment import (
    clean_correspondence,
    correspondence_map,
    filter_token_peaks,
    grid_to_reference,
)
from refine_by_align.zoom import Box

G = 8  # token grid
SIDE = 16  # query map side


def _planted_attention(shift=(2, 1), noise=0.0, seed=0):
    """Query pixel (y, x) attends to token (y//2 + dy, x//2 + dx): a known translation."""
    rng = np.random.default_rng(seed)
    a = np.full((SIDE * SIDE, G * G), noise, np.float64)
    for y in range(SIDE):
        for x in range(SIDE):
            ty = min(max(y // 2 + shift[0], 0), G - 1)
            tx = min(max(x // 2 + shift[1], 0), G - 1)
            a[y * SIDE + x, ty * G + tx] += 1.0
    a += rng.random(a.shape) * noise
    a /= a.sum(1, keepdims=True)
    return torch.tensor(a, dtype=torch.float32)[None]


def test_eq5_and_a4_recover_a_planted_translation():
    attn = _planted_attention(shift=(2, 1), noise=0.002)
    mask = torch.zeros(1, 1, 64, 64)  # any resolution: resized to 16x16 with area weights
    mask[..., 8:24, 16:32] = 1  # query rows 2..5, cols 4..7 -> tokens rows 1..2(+2), cols 2..3(+1)
    raw = correspondence_map(attn, mask, G)[0].numpy()
    blob, norm = clean_correspondence(raw)
    expected = np.zeros((G, G), bool)
    expected[3:5, 3:5] = True
    assert (blob == expected).all()
    assert norm.max() == pytest.approx(1.0)


def test_a4_removes_border_noise_peaks_and_keeps_largest_blob():
    raw = np.zeros((G, G))
    raw[3:6, 2:5] = 1.0  # the true region (a blob)
    raw[0, 7] = 5.0  # an isolated ViT corner peak, stronger than the blob
    raw[7, 0] = 4.0
    raw[6:8, 6] = 0.8  # a smaller, weaker blob
    filtered = filter_token_peaks(raw)
    assert filtered[0, 7] < 1.0 and filtered[7, 0] < 1.0
    assert np.allclose(filtered[3:6, 2:5], raw[3:6, 2:5])
    blob, _ = clean_correspondence(raw)
    expected = np.zeros((G, G), bool)
    expected[3:6, 2:5] = True
    assert (blob == expected).all()


def test_a4_spike_takes_its_neighbours_median_and_the_blob_is_chosen_by_weight():
    """A.4 read exactly: an isolated spike (3.5 times its strongest neighbour, over the ratio of 3)
    becomes the median of its 8 neighbours (mirrored at the border), one 2.5 times them stays;
    the blob kept is the one with the largest summed weight, not the most tokens (a small strong
    blob over a larger weak one)."""
    i, j = np.mgrid[0:G, 0:G]
    raw = 0.1 + 0.01 * i + 0.02 * j  # a sloped floor: every neighbourhood has its own median
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    padded = np.pad(raw, 1, mode="reflect")  # (NumPy's reflect is SciPy's mirror)
    raw[0, 7] = 3.5 * padded[0:3, 7:10][ring].max()  # a corner spike, 3.5 times its strongest neighbour
    raw[4, 4] = 2.5 * raw[3:6, 3:6][ring].max()  # 2.5 times its strongest neighbour
    padded = np.pad(raw, 1, mode="reflect")
    filtered = filter_token_peaks(raw)
    assert filtered[0, 7] == pytest.approx(np.median(padded[0:3, 7:10][ring]))
    assert filtered[4, 4] == raw[4, 4]  # (2.5 times its neighbours: a match, kept)
    changed = filtered != raw
    assert changed.sum() == 1 and changed[0, 7]

    weights = np.zeros((G, G))
    weights[0:2, 0:3] = 0.55  # 6 tokens, summed weight 3.3 (after the normalisation: the map's max is 1)
    weights[5:7, 5:7] = 1.0  # 4 tokens, summed weight 4.0
    blob, norm = clean_correspondence(weights)
    assert blob[5:7, 5:7].all() and blob.sum() == 4 and norm.max() == 1.0


def test_recording_processor_plus_eq5_recover_one_hot_tokens_by_position():
    """A real diffusers Attention whose reference tokens are one-hot by position: the recorded
    probabilities, summed over the mask (Eq. 5) and cleaned (A.4), land on the planted tokens."""
    d = G * G
    attn = Attention(query_dim=d, cross_attention_dim=d, heads=1, dim_head=d)
    with torch.no_grad():
        for lin in (attn.to_q, attn.to_k):
            lin.weight.copy_(torch.eye(d) * 30.0)
    tokens = torch.eye(d)[None]  # token k = e_k: one-hot by position
    target = np.zeros((SIDE, SIDE), np.int64)  # query pixel -> token index under a flip
    for y in range(SIDE):
        for x in range(SIDE):
            target[y, x] = (G - 1 - y // 2) * G + (x // 2)
    hidden = torch.nn.functional.one_hot(torch.tensor(target.reshape(-1)), d).float()[None]  # (1, HW, d)
    store = AttentionStore()
    attn.set_processor(RecordingAttnProcessor(store, "planted"))
    attn(hidden, encoder_hidden_states=tokens)
    probs = store["planted"]
    assert probs.shape == (1, SIDE * SIDE, d)
    mask = torch.zeros(1, 1, SIDE, SIDE)
    mask[..., 0:4, 10:14] = 1  # query rows 0..3 -> token rows 7..6; cols 10..13 -> token cols 5..6
    blob, _ = clean_correspondence(correspondence_map(probs, mask, G)[0].numpy())
    expected = np.zeros((G, G), bool)
    expected[6:8, 5:7] = True
    assert (blob == expected).all()


def test_grid_to_reference_maps_the_encoder_box():
    grid = np.zeros((4, 4), bool)
    grid[1, 2] = True
    box = Box(10, -10, 50, 30)  # a square that sticks out of the top of the reference
    out = grid_to_reference(grid, box, (40, 60))
    ys, xs = np.nonzero(out)
    assert xs.min() == 30 and xs.max() == 39
    assert ys.min() == 0 and ys.max() == 9
    assert out.shape == (40, 60)
    # a float map (the heat map): smooth, bilinear between token centres; else each token's block
    heat = np.zeros((4, 4), np.float32)
    heat[1, 2] = 1.0
    soft = grid_to_reference(heat, box, (40, 60), smooth=True)
    blocky = grid_to_reference(heat, box, (40, 60))
    assert soft.dtype == blocky.dtype == np.float32
    assert set(np.unique(blocky)) == {0.0, 1.0} and blocky[0:10, 30:40].all()
    assert 0.0 < soft[5, 28] < 1.0 and soft[5, 35] == pytest.approx(1.0, abs=0.15) and len(np.unique(soft)) > 10


def test_correspondence_map_rejects_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        correspondence_map(torch.rand(1, 10, 16), torch.ones(1, 1, 4, 4), 4)
    with pytest.raises(ValueError, match="tokens"):
        correspondence_map(torch.rand(1, 16, 15), torch.ones(1, 1, 4, 4), 4)


def test_alignment_pass_stops_after_its_last_layer_with_the_same_maps(tiny_pipe, simple_inputs):
    """attention_grid ends each U-Net pass once the listed layers are recorded: the maps equal
    those of a whole pass, and the blocks after the layer never run."""
    from diffusers import DDPMScheduler

    from refine_by_align.models.attention import record_layers
    from refine_by_align.pipelines.alignment import attention_grid

    image, mask, reference = simple_inputs
    p = tiny_pipe.prepare(image, mask, reference)
    inputs = tiny_pipe.crop_inputs(p)
    model = tiny_pipe.model
    context = model.encode_reference(tiny_pipe.reference_tensor(p.reference, p.reference_box))
    names = model.cross_attention_layers
    first = 0  # the tiny U-Net's first cross-attention layer sits in its first down block
    assert names[first].startswith("down_blocks.0")
    ran = []
    hook = model.unet.up_blocks[-1].register_forward_hook(lambda *a: ran.append(1))
    try:
        early = attention_grid(model, inputs.sample, inputs.masked, inputs.lmask, context, [0], [first], DDPMScheduler())
    finally:
        hook.remove()
    assert not ran  # the last up block was skipped
    store = AttentionStore()
    record_layers(model.unet, [names[first]], store)
    try:
        model(inputs.sample, torch.zeros(1, dtype=torch.long), inputs.masked, inputs.lmask, context)
    finally:
        record_layers(model.unet, [], store)
    full = correspondence_map(store[names[first]], inputs.lmask, model.cfg.grid_size)
    torch.testing.assert_close(early[0, 0], full)


def test_alignment_result_old_names_still_read_with_a_deprecation_warning():
    """Issue 14 item 5: M* is ``region`` and (t, l) are ``alignment_timestep`` / ``alignment_layer``;
    the old attribute names read the same values for one more release, with a warning."""
    from refine_by_align.pipelines.alignment import AlignmentResult

    region, grid_region = np.eye(4, dtype=bool), np.ones((2, 2), bool)
    res = AlignmentResult(region, np.zeros((4, 4), np.float32), None, grid_region, 500, 3, "attention")
    for old, new in (("mask", "region"), ("grid_mask", "grid_region"), ("timestep", "alignment_timestep"), ("layer", "alignment_layer")):
        with pytest.warns(DeprecationWarning, match=rf"AlignmentResult\.{old} is deprecated, use \.{new}"):
            assert getattr(res, old) is getattr(res, new)
