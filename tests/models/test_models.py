import numpy as np
import pytest
import torch

from refine_by_align.config import ModelConfig, get_config
from refine_by_align.fill import fill_hole
from refine_by_align.models.attention import AttentionStore, cross_attention_layers, record_layers
from refine_by_align.models.denoiser import build_unet
from refine_by_align.models.refiner import RefineByAlignModel


def _tiny(seed=0):
    torch.manual_seed(seed)
    return RefineByAlignModel.from_model_config(get_config("tiny")).eval()


def _inputs(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = cfg.resolution
    noisy = torch.randn(b, 3, s, s, generator=g)
    masked = torch.randn(b, 3, s, s, generator=g)
    mask = (torch.rand(b, 1, s, s, generator=g) > 0.5).float()
    ref = torch.rand(b, 3, 40, 50, generator=g)
    return noisy, masked, mask, ref


def test_forward_shape_no_nan_and_determinism():
    m = _tiny()
    noisy, masked, mask, ref = _inputs(m.cfg)
    t = torch.tensor([0, 500])
    with torch.no_grad():
        a = m(noisy, t, masked, mask, reference=ref)
        b = m(noisy, t, masked, mask, reference=ref)
    assert a.shape == noisy.shape
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    m2 = _tiny(seed=0)
    with torch.no_grad():
        assert torch.equal(a, m2(noisy, t, masked, mask, reference=ref))


def test_reference_changes_output_and_drop_uses_null_tokens():
    m = _tiny()
    noisy, masked, mask, ref = _inputs(m.cfg)
    t = torch.tensor([10, 10])
    with torch.no_grad():
        a = m(noisy, t, masked, mask, reference=ref)
        b = m(noisy, t, masked, mask, reference=ref.flip(-1))
        d1 = m(noisy, t, masked, mask, reference=ref, drop=torch.tensor([True, True]))
        d2 = m(noisy, t, masked, mask, reference=ref.flip(-1), drop=torch.tensor([True, True]))
    assert not torch.allclose(a, b)
    assert torch.equal(d1, d2)  # the dropped reference has no influence


def test_encoder_tokens_drop_class_token():
    m = _tiny()
    cfg = m.cfg
    ref = torch.rand(3, 3, 21, 37)
    tokens = m.reference_encoder(ref)
    assert tokens.shape == (3, cfg.grid_size**2, cfg.unet.cross_attention_dim)
    raw = m.reference_encoder.vit(pixel_values=m.reference_encoder.preprocess(ref)).last_hidden_state
    assert raw.shape[1] == cfg.grid_size**2 + 1
    assert torch.allclose(m.reference_encoder.patch_tokens(ref), raw[:, 1:])


def test_shape_mismatch_is_a_clear_value_error():
    m = _tiny()
    noisy, masked, mask, ref = _inputs(m.cfg)
    with pytest.raises(ValueError, match="shape mismatch"):
        m(noisy, torch.tensor([1, 1]), masked[:, :2], mask, reference=ref)
    with pytest.raises(ValueError, match="reference images"):
        m.reference_encoder(torch.rand(1, 4, 8, 8))


def test_save_load_round_trip(tmp_path):
    m = _tiny()
    m.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists()
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    m2 = RefineByAlignModel.load(tmp_path)
    assert m2.cfg == m.cfg
    noisy, masked, mask, ref = _inputs(m.cfg)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(m(noisy, t, masked, mask, reference=ref), m2(noisy, t, masked, mask, reference=ref))


def _resave(folder, rename):
    from safetensors.torch import load_file, save_file

    f = folder / "diffusion_pytorch_model.safetensors"
    state = {rename(k): v for k, v in load_file(f).items()}
    save_file(state, f)


def test_load_accepts_the_other_transformers_attention_layout(tmp_path):
    """Weights saved under Dinov2's older attention names (attention.attention.query ...) load to
    the same model as under the current ones (attention.q_proj ...), and the reverse."""
    from safetensors.torch import load_file

    from refine_by_align.models.refiner import _VIT_RENAMES

    m = _tiny()
    m.save_pretrained(tmp_path)
    current = set(m.state_dict())
    uses_new = any(new in k for k in current for _, new in _VIT_RENAMES)

    def to_other(k):
        for old, new in _VIT_RENAMES:
            k = k.replace(new, old) if uses_new else k.replace(old, new)
        return k

    _resave(tmp_path, to_other)
    saved = set(load_file(tmp_path / "diffusion_pytorch_model.safetensors"))
    assert saved != current and len(saved) == len(current)  # the file really uses the other names
    m2 = RefineByAlignModel.load(tmp_path)
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


def test_load_reads_sharded_folders_and_refuses_ambiguous_ones(tmp_path):
    m = _tiny()
    m.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").exists()
    m2 = RefineByAlignModel.load(tmp_path / "sharded")
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m.state_dict().items())
    m.save_pretrained(tmp_path / "two")
    f = tmp_path / "two" / "diffusion_pytorch_model.safetensors"
    f.rename(tmp_path / "two" / "a.safetensors")
    (tmp_path / "two" / "b.safetensors").write_bytes((tmp_path / "two" / "a.safetensors").read_bytes())
    with pytest.raises(ValueError, match="ambiguous"):
        RefineByAlignModel.load(tmp_path / "two")


def test_load_refuses_weights_that_do_not_fit(tmp_path):
    m = _tiny()
    m.save_pretrained(tmp_path)
    _resave(tmp_path, lambda k: k.replace("unet.conv_in.weight", "unet.conv_in.w"))
    with pytest.raises(ValueError, match="1 missing weights"):
        RefineByAlignModel.load(tmp_path)


def test_load_refuses_pickles(tmp_path):
    m = _tiny()
    m.save_pretrained(tmp_path)
    torch.save({"x": torch.zeros(1)}, tmp_path / "extra.bin")
    with pytest.raises(ValueError, match="pickle"):
        RefineByAlignModel.load(tmp_path)


def test_load_refuses_folder_without_safetensors(tmp_path):
    m = _tiny()
    m.save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="safetensors"):
        RefineByAlignModel.load(tmp_path)


def test_config_round_trip_and_unknown_field():
    for name in ("tiny", "default", "paper"):
        cfg = get_config(name)
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="unknown config"):
        get_config("huge")


def test_paper_config_has_16_cross_attention_layers_and_layer_9_at_16x16():
    cfg = get_config("paper")
    with torch.device("meta"):
        unet = build_unet(cfg)
    names = cross_attention_layers(unet)
    assert len(names) == 16
    assert names[0].startswith("down_blocks.0")
    assert names[6].startswith("mid_block")
    # paper l = 9 (0-based, forward order) is the last attention of the 16x16 up block
    assert names[cfg.alignment_layer] == "up_blocks.1.attentions.2.transformer_blocks.0.attn2"
    assert cfg.encoder_image_size == 224 and cfg.grid_size == 16
    assert unet.config.in_channels == 9 and unet.config.out_channels == 4


def test_recording_processor_matches_sdpa_and_probabilities_sum_to_one():
    m = _tiny()
    noisy, masked, mask, ref = _inputs(m.cfg)
    t = torch.tensor([5, 5])
    with torch.no_grad():
        base = m(noisy, t, masked, mask, reference=ref)
        store = AttentionStore()
        record_layers(m.unet, m.cross_attention_layers, store)
        rec = m(noisy, t, masked, mask, reference=ref)
    assert torch.allclose(base, rec, atol=1e-5)
    assert set(store.maps) == set(m.cross_attention_layers)
    for name, p in store.maps.items():
        assert p.shape[0] == 2 and p.shape[2] == m.cfg.num_tokens
        assert torch.allclose(p.sum(-1), torch.ones_like(p.sum(-1)), atol=1e-5)
    with pytest.raises(ValueError, match="not cross-attention"):
        record_layers(m.unet, ["up_blocks.9.attentions.0.transformer_blocks.0.attn2"], store)


def test_recorded_attention_keeps_gradients_when_asked():
    m = _tiny().train()
    noisy, masked, mask, ref = _inputs(m.cfg)
    store = AttentionStore(keep_grad=True)
    layer = m.cross_attention_layers[0]
    record_layers(m.unet, [layer], store)
    m(noisy, torch.tensor([5, 5]), masked, mask, reference=ref)
    store[layer][..., 0].sum().backward()
    assert m.reference_encoder.projector[0].weight.grad is not None
    assert m.reference_encoder.projector[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("latent", ["pixel", "vae-tiny"])
def test_inpainting_inputs_match_the_separate_encodes(latent):
    """One autoencoder pass for the crop and its hole-filled copy gives what two passes give."""
    cfg = ModelConfig.from_dict({**get_config("tiny").to_dict(), "latent": latent, "resolution": 32, "hole_fill": "telea"})
    torch.manual_seed(0)
    m = RefineByAlignModel.from_model_config(cfg).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=g)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 10:24] = 1
    with torch.no_grad():
        sample, prefill, masked, lmask = m.inpainting_inputs(images, mask)
        assert torch.allclose(sample, m.to_latent(images), atol=1e-5)
        assert torch.allclose(masked, m.to_latent(fill_hole(images, mask, cfg.hole_fill)), atol=1e-5)
        assert torch.equal(prefill[mask.expand_as(images) == 0], images[mask.expand_as(images) == 0])
        side = 32 // cfg.latent_downsample
        assert sample.shape == masked.shape == (2, cfg.latent_channels, side, side) and lmask.shape == (2, 1, side, side)
        none, _, masked2, _ = m.inpainting_inputs(images, mask, with_sample=False)
        assert none is None and torch.allclose(masked2, masked, atol=1e-5)


def test_denoise_uses_a_stand_in_unet_without_asking_its_truth_value():
    """torch.compile's wrapper cannot be used in a boolean test (it raised 'does not support len()')."""
    m = _tiny()

    class StandIn(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet, self.calls = unet, 0

        def __len__(self):
            raise TypeError("does not support len()")

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.unet(*args, **kwargs)

    s = m.cfg.resolution
    x, masked, mask = torch.randn(1, 3, s, s), torch.randn(1, 3, s, s), torch.ones(1, 1, s, s)
    ctx = m.encode_reference(torch.rand(1, 3, 8, 8))
    stand_in = StandIn(m.unet)
    with torch.no_grad():
        out = m.denoise(x, torch.tensor([10]), masked, mask, ctx, unet=stand_in)
        assert stand_in.calls == 1 and torch.equal(out, m.denoise(x, torch.tensor([10]), masked, mask, ctx))


def _unet_folder(tmp_path, cfg, in_channels=None, seed=1, **changes):
    """A diffusers U-Net saved as safetensors under tmp_path/pipe/unet, as in a pipeline's folder."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kw = dict(build_unet(cfg).config)
    kw = {k: v for k, v in kw.items() if not k.startswith("_")}
    kw.update(changes)
    if in_channels is not None:
        kw["in_channels"] = in_channels
    unet = UNet2DConditionModel(**kw)
    unet.save_pretrained(tmp_path / "pipe" / "unet", safe_serialization=True)
    return unet


def test_unet_starts_from_a_pretrained_inpainting_unet(tmp_path):
    import dataclasses

    cfg = get_config("tiny")
    src = _unet_folder(tmp_path, cfg)
    cfg = dataclasses.replace(cfg, unet_pretrained=str(tmp_path / "pipe"), unet_subfolder="unet")
    m = RefineByAlignModel.from_model_config(cfg)
    for k, v in src.state_dict().items():
        assert torch.equal(m.unet.state_dict()[k], v), k
    assert m.cross_attention_layers == cross_attention_layers(src)
    # saved and reloaded, the model is rebuilt from its config and does not read the source again
    m.save_pretrained(tmp_path / "saved")
    (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    back = RefineByAlignModel.load(tmp_path / "saved")
    assert torch.equal(back.unet.conv_in.weight, src.conv_in.weight)


def test_text_to_image_unet_is_widened_with_zero_weights(tmp_path):
    """A text-to-image U-Net (C inputs) starts as itself: the masked image and mask get zero weights.
    Its config says ``"upcast_attention": null`` as SD-1.5's does (diffusers now writes false)."""
    import dataclasses
    import json

    cfg = get_config("tiny")
    c = cfg.latent_channels
    src = _unet_folder(tmp_path, cfg, in_channels=c, upcast_attention=None).eval()
    assert json.loads((tmp_path / "pipe" / "unet" / "config.json").read_text())["upcast_attention"] is None
    cfg = dataclasses.replace(cfg, unet_pretrained=str(tmp_path / "pipe"), unet_subfolder="unet")
    m = RefineByAlignModel.from_model_config(cfg).eval()
    assert m.unet.conv_in.in_channels == m.unet.config.in_channels == 2 * c + 1
    assert torch.equal(m.unet.conv_in.weight[:, :c], src.conv_in.weight)
    assert not m.unet.conv_in.weight[:, c:].any()
    noisy, masked, mask, _ = _inputs(cfg)
    ctx = torch.randn(2, cfg.num_tokens, cfg.unet.cross_attention_dim)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        got = m.unet(torch.cat([noisy, masked, mask], 1), t, encoder_hidden_states=ctx).sample
        want = src(noisy, t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_pretrained_unet_that_does_not_fit_is_refused(tmp_path):
    import dataclasses

    cfg = get_config("tiny")
    _unet_folder(tmp_path, cfg, cross_attention_dim=24)
    bad = dataclasses.replace(cfg, unet_pretrained=str(tmp_path / "pipe"), unet_subfolder="unet")
    with pytest.raises(ValueError, match="cross_attention_dim: checkpoint 24, config 16"):
        RefineByAlignModel.from_model_config(bad)
    _unet_folder(tmp_path, cfg, in_channels=5)
    with pytest.raises(ValueError, match="5 input channels"):
        RefineByAlignModel.from_model_config(bad)
    with pytest.raises(ValueError, match="as safetensors"):
        RefineByAlignModel.from_model_config(dataclasses.replace(cfg, unet_pretrained=str(tmp_path / "nowhere")))


def test_autoencoder_loads_from_a_pipeline_subfolder(tmp_path):
    import dataclasses

    from diffusers import AutoencoderTiny

    torch.manual_seed(3)
    vae = AutoencoderTiny(scaling_factor=1.0)
    vae.save_pretrained(tmp_path / "pipe" / "vae", safe_serialization=True)
    cfg = dataclasses.replace(get_config("tiny"), latent="vae-tiny", resolution=32, vae_pretrained=str(tmp_path / "pipe"), vae_subfolder="vae")
    m = RefineByAlignModel.from_model_config(cfg)
    assert torch.equal(m.vae.encoder.layers[0].weight, vae.encoder.layers[0].weight)


def test_load_builds_no_random_weights_and_keeps_the_configs_dtypes(tmp_path):
    """load() builds the model on the meta device and assigns the file's tensors: nothing is left
    on meta, the normalisation buffers are rebuilt, and bf16-saved weights come back in float32."""
    m = _tiny(seed=2)
    torch.nn.Module.to(m, torch.bfloat16).save_pretrained(tmp_path)
    back = RefineByAlignModel.load(tmp_path)
    tensors = list(back.parameters()) + list(back.buffers())
    assert not any(t.is_meta for t in tensors) and {t.dtype for t in tensors} == {torch.float32}
    assert torch.equal(back.reference_encoder.mean.flatten(), torch.tensor(back.cfg.encoder.image_mean))
    assert not back.training and not back.reference_encoder.vit.embeddings.mask_token.requires_grad
    assert torch.equal(back.unet.conv_in.weight, m.unet.conv_in.weight.float())
    # the parameters own their memory (safetensors maps the file): rewriting the file in place,
    # as a new export of the same model does, leaves a loaded model as it was
    _tiny(seed=4).save_pretrained(tmp_path / "f32")
    loaded = RefineByAlignModel.load(tmp_path / "f32")
    before = loaded.unet.conv_in.weight.clone()
    _tiny(seed=5).save_pretrained(tmp_path / "other")
    data = (tmp_path / "other" / "diffusion_pytorch_model.safetensors").read_bytes()
    with open(tmp_path / "f32" / "diffusion_pytorch_model.safetensors", "r+b") as f:
        f.write(data)
    assert torch.equal(loaded.unet.conv_in.weight, before)


def test_pretrained_parts_that_cannot_be_had_name_themselves(tmp_path):
    import dataclasses

    cfg = get_config("tiny")
    enc = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, pretrained=str(tmp_path / "no-dino")))
    with pytest.raises(ValueError, match="cannot load the reference encoder weights .*no-dino"):
        RefineByAlignModel.from_model_config(enc)
    vae = dataclasses.replace(cfg, latent="vae-tiny", resolution=32, vae_pretrained=str(tmp_path / "sd"), vae_subfolder="vae")
    with pytest.raises(ValueError, match=r"cannot load the autoencoder weights .*sd \(subfolder vae\)"):
        RefineByAlignModel.from_model_config(vae)


def test_warp_channel_model_widened_from_a_saved_one_computes_what_it_computed(tmp_path):
    """hole_fill "warp" + warp_channel: init_weights widens the saved U-Net's conv_in with zero
    weights for the trust channel, so the new model starts out computing exactly what the saved
    one computes, whatever the trust map holds; the masked input carries C + 1 channels."""
    import dataclasses

    from refine_by_align.training.train import init_weights

    torch.manual_seed(0)
    old = RefineByAlignModel.from_model_config(dataclasses.replace(get_config("tiny"), hole_fill="telea"), load_pretrained=False).eval()
    old.save_pretrained(tmp_path / "old", safe_serialization=True)
    cfg = dataclasses.replace(get_config("tiny"), hole_fill="warp", warp_channel=True)
    new = RefineByAlignModel.from_model_config(cfg, load_pretrained=False).eval()
    assert new.unet.conv_in.in_channels == old.unet.conv_in.in_channels + 1 == 8
    init_weights(new, tmp_path / "old")
    assert torch.equal(new.unet.conv_in.weight[:, -1], torch.zeros_like(new.unet.conv_in.weight[:, -1]))
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 16, 16, generator=g)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 5:11] = 1
    warp = torch.rand(2, 3, 16, 16, generator=g)
    trust = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float() * mask
    _, prefill, masked, lmask = new.inpainting_inputs(images, mask, warp=warp, trust=trust)
    assert masked.shape == (2, 4, 16, 16) and torch.equal(masked[:, 3:], trust)
    assert torch.equal(prefill[trust.expand(-1, 3, -1, -1) > 0.5], warp[trust.expand(-1, 3, -1, -1) > 0.5])
    assert torch.equal(prefill[mask.expand(-1, 3, -1, -1) < 0.5], images[mask.expand(-1, 3, -1, -1) < 0.5])
    noisy = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([10, 700])
    ref = torch.rand(2, 3, 8, 8, generator=g)
    with torch.no_grad():
        a = old(noisy, t, masked[:, :3], lmask, reference=ref)
        b = new(noisy, t, masked, lmask, reference=ref)
    assert torch.equal(a, b)
    # no warp given: Telea in the hole (as the "telea" fill) and a zero trust channel
    _, pre0, masked0, _ = new.inpainting_inputs(images, mask)
    assert torch.equal(pre0, fill_hole(images, mask, "telea")) and not masked0[:, 3:].any()
    with pytest.raises(ValueError, match="shape mismatch"):
        new(noisy, t, masked[:, :3], lmask, reference=ref)  # the trust channel is required
