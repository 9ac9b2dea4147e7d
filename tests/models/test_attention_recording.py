"""``with recording(unet, layers) as store:`` and the layer-name parsing in models/attention.py."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from refine_by_align.config import get_config
from refine_by_align.models.attention import (
    AllLayersRecorded,
    RecordingAttnProcessor,
    layer_level,
    parse_layer,
    recording,
)
from refine_by_align.models.refiner import RefineByAlignModel


def _model():
    torch.manual_seed(0)
    return RefineByAlignModel.from_model_config(get_config("tiny")).eval()


def _inputs(cfg, b=2):
    g = torch.Generator().manual_seed(0)
    s = cfg.resolution
    return (torch.randn(b, 3, s, s, generator=g), torch.randn(b, 3, s, s, generator=g),
            (torch.rand(b, 1, s, s, generator=g) > 0.5).float(), torch.rand(b, 3, 40, 50, generator=g))


def _recorded(unet) -> set[str]:
    return {k[: -len(".processor")] for k, v in unet.attn_processors.items() if isinstance(v, RecordingAttnProcessor)}


def test_parse_layer_and_level():
    assert parse_layer("up_blocks.1.attentions.2.transformer_blocks.0.attn2") == ("up_blocks", 1, 2, 0)
    assert parse_layer("mid_block.attentions.0.transformer_blocks.1.attn2") == ("mid_block", 0, 0, 1)
    with pytest.raises(ValueError, match="unexpected cross-attention module name"):
        parse_layer("up_blocks.1.attentions.0.transformer_blocks.0.attn1")
    assert layer_level("down_blocks.2.attentions.0.transformer_blocks.0.attn2", 4) == 2
    assert layer_level("mid_block.attentions.0.transformer_blocks.0.attn2", 4) == 3
    assert layer_level("up_blocks.0.attentions.0.transformer_blocks.0.attn2", 4) == 3
    assert layer_level("up_blocks.3.attentions.1.transformer_blocks.0.attn2", 4) == 0


def test_recording_records_inside_and_restores_on_leaving():
    m = _model()
    noisy, masked, mask, ref = _inputs(m.cfg)
    t = torch.tensor([5, 5])
    names = m.cross_attention_layers
    before = m.unet.attn_processors
    with torch.no_grad():
        base = m(noisy, t, masked, mask, reference=ref)
        with recording(m.unet, names[:2]) as store:
            assert _recorded(m.unet) == set(names[:2])
            rec = m(noisy, t, masked, mask, reference=ref)
    torch.testing.assert_close(base, rec, atol=1e-5, rtol=0)
    assert set(store.maps) == set(names[:2]) and not store[names[0]].requires_grad  # kept after the block
    after = m.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)  # the same processors back


def test_recordings_nest_and_an_error_still_restores():
    m = _model()
    noisy, masked, mask, ref = _inputs(m.cfg)
    names = m.cross_attention_layers
    with recording(m.unet, names, keep_grad=True) as outer:
        with recording(m.unet, [names[-1]]) as inner, torch.no_grad():
            assert _recorded(m.unet) == {names[-1]}
            m(noisy, torch.tensor([5, 5]), masked, mask, reference=ref)
        assert _recorded(m.unet) == set(names) and not outer.maps  # the outer recording is back, untouched
        m.train()
        m(noisy, torch.tensor([5, 5]), masked, mask, reference=ref)
        assert set(outer.maps) == set(names) and outer[names[0]].requires_grad
        with pytest.raises(RuntimeError, match="boom"), recording(m.unet, [names[0]]):
            raise RuntimeError("boom")
        assert _recorded(m.unet) == set(names)
    assert set(inner.maps) == {names[-1]}
    assert not _recorded(m.unet) and all(isinstance(v, AttnProcessor2_0) for v in m.unet.attn_processors.values())


def test_stop_ends_the_pass_once_the_layers_are_recorded():
    m = _model()
    noisy, masked, mask, ref = _inputs(m.cfg)
    first = m.cross_attention_layers[0]
    ran = []
    hook = m.unet.up_blocks[-1].register_forward_hook(lambda *a: ran.append(1))
    try:
        with torch.no_grad(), recording(m.unet, [first], stop=True) as store:
            with pytest.raises(AllLayersRecorded):
                m(noisy, torch.tensor([0, 0]), masked, mask, reference=ref)
    finally:
        hook.remove()
    assert not ran and set(store.maps) == {first}
    with pytest.raises(ValueError, match="not cross-attention layers"), recording(m.unet, ["up_blocks.9.attentions.0.transformer_blocks.0.attn2"]):
        pass
    assert not _recorded(m.unet)
