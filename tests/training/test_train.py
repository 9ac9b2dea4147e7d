"""Training on the tiny config: steps, checkpoints, resume, and a 2-process accelerate run."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from refine_by_align.training.losses import attention_supervision_loss, masked_noise_loss, token_targets
from refine_by_align.training.train import TrainConfig, latest_checkpoint, load_train_config, train


def _tc(**kw):
    """The tiny recipe at batch 2 (half its compute: what these tests check does not depend on the batch)."""
    tc = load_train_config("tiny")
    return dataclasses.replace(tc, **({"batch_size": 2} | kw))


def test_two_steps_write_checkpoint_log_and_weights(tmp_path):
    rec = train(_tc(max_steps=2, eval_every=2), tmp_path, progress=False)
    assert rec["step"] == 2 and np.isfinite(rec["loss"])
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and json.loads((ckpt / "state.json").read_text())["step"] == 2
    assert (ckpt / "model.safetensors").exists() and (ckpt / "train_config.json").exists()
    lines = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    train_recs = [r for r in lines if not r.get("eval")]
    evals = [r for r in lines if r.get("eval")]
    assert [r["step"] for r in train_recs] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["loss_attn"] > 0 for r in train_recs)
    assert evals and "hole_mse_right" in evals[0] and "hole_mse_shuffled" in evals[0]
    from refine_by_align.models.refiner import RefineByAlignModel

    m = RefineByAlignModel.load(tmp_path / "weights")
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_cosine_schedule_decays_the_learning_rate_and_bad_names_fail(tmp_path):
    train(_tc(max_steps=4, warmup_steps=1, lr_schedule="cosine", eval_every=0, log_every=1), tmp_path, progress=False)
    lrs = [json.loads(l)["lr_unet"] for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(lrs) == 4 and lrs[0] > lrs[1] > lrs[2] > lrs[3] >= 0.0  # after warm-up: down to 0 at max_steps
    assert lrs[3] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lr_schedule"):
        train(_tc(max_steps=1, lr_schedule="linear"), tmp_path / "bad", progress=False)


def test_resume_continues_from_saved_step_with_identical_rng_state(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    # uninterrupted reference run: 4 steps
    train(_tc(max_steps=4), a, progress=False)
    # interrupted run: stop at step 2 (checkpoint), then resume to 4
    train(_tc(max_steps=4), b, max_steps=2, progress=False)
    ckpt2 = latest_checkpoint(b)
    saved_rng = torch.load(ckpt2 / "random_states_0.pkl", weights_only=False)  # our own checkpoint
    rec = train(_tc(max_steps=4), b, resume=True, progress=False)
    assert rec["step"] == 4
    la = [json.loads(l) for l in (a / "log.jsonl").read_text().splitlines() if '"eval"' not in l]
    lb = [json.loads(l) for l in (b / "log.jsonl").read_text().splitlines() if '"eval"' not in l]
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    # same data, same noise, same weights: the resumed steps reproduce the uninterrupted run
    for ra, rb in zip(la[2:], lb[2:]):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6)
    assert "torch_manual_seed" in saved_rng and "numpy_random_seed" in saved_rng
    from safetensors.torch import load_file

    sa = load_file(str(latest_checkpoint(a) / "model.safetensors"))
    sb = load_file(str(latest_checkpoint(b) / "model.safetensors"))
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    rec = train(_tc(max_steps=1, eval_every=0), tmp_path, resume=True, progress=False)
    assert rec["step"] == 1


def test_unknown_recipe_and_fields(tmp_path):
    with pytest.raises(ValueError, match="no training config"):
        load_train_config("nope")
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"model": "tiny", "bogus": 1}))
    with pytest.raises(ValueError, match="unknown training config fields"):
        load_train_config(str(p))


def test_token_targets_point_at_the_true_token():
    coords = torch.full((1, 2, 8, 8), float("nan"))
    coords[0, 0, 2:4, 2:4] = 0.35  # x: token centre 3
    coords[0, 1, 2:4, 2:4] = 0.75  # y: token centre 7
    target, valid = token_targets(coords, side=4, grid=10, sigma=0.6)
    q = 1 * 4 + 1  # the query cell covering pixels 2..3
    assert valid[0].sum() == 1 and valid[0, q]
    k = int(target[0, q].argmax())
    assert (k // 10, k % 10) == (7, 3)
    assert target[0, q].sum() == pytest.approx(1.0)


def test_attention_loss_is_lower_for_the_right_attention():
    coords = torch.zeros(1, 2, 4, 4)
    coords[0, 0] = torch.linspace(0.1, 0.9, 4).view(1, 4)
    coords[0, 1] = torch.linspace(0.1, 0.9, 4).view(4, 1)
    target, _ = token_targets(coords, 4, 4, 0.6)
    mask = torch.ones(1, 1, 4, 4)
    use = torch.tensor([True])
    right = attention_supervision_loss(target.clamp_min(1e-6), coords, mask, use, 4, 0.6)
    uniform = attention_supervision_loss(torch.full_like(target, 1 / 16), coords, mask, use, 4, 0.6)
    assert right < uniform
    none = attention_supervision_loss(torch.full_like(target, 1 / 16), coords, mask, torch.tensor([False]), 4, 0.6)
    assert none.item() == 0.0


def test_noise_loss_weights_the_hole():
    pred, noise = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    pred[..., 0, 0] = 1.0
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, 0] = 1
    assert masked_noise_loss(pred, noise, mask, 10.0) > masked_noise_loss(pred, noise, torch.zeros_like(mask), 10.0)


def test_accelerate_two_processes_on_cpu(tmp_path):
    """Two DDP processes over gloo on a CPU-only machine run 2 steps.

    accelerate's ``--cpu`` flag starts one process unless MPI is configured (its multi-CPU path
    goes through mpirun); ``--multi_gpu`` on a machine without GPUs starts torchrun processes that
    accelerate runs as MULTI_CPU with the gloo backend. Only the main process says where the run
    stopped (it was said once per process), and takes the run folder's lock; the saved config says
    there were two processes and that batch_size is per process."""
    p = _two_processes(tmp_path, max_steps=2)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("stopped at step 2: the recipe's last step (max_steps 2) reached") == 1
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and json.loads((ckpt / "state.json").read_text())["step"] == 2
    assert (ckpt / "random_states_1.pkl").exists()  # both processes saved their RNG state
    saved = json.loads((ckpt / "train_config.json").read_text())
    assert (saved["processes"], saved["batch_size"], saved["batch_size_is"], saved["global_batch_size"]) == (2, 2, "per process", 4)
    from safetensors.torch import load_file

    from refine_by_align.loading import load_pipeline

    saved_weights = load_file(ckpt / "model.safetensors")  # (as accelerate saved the DDP-wrapped model)
    model = load_pipeline(ckpt, device="cpu").model  # --model a checkpoint of a multi-process run
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved_weights.items())
    # a time limit: every process stops at the same step (a checkpoint waits for all of them)
    p = _two_processes(tmp_path / "limited", max_steps=6, extra=["--time-limit", "1e-9"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("stopped at step 1: time limit of 1e-09 s reached") == 1
    assert json.loads((latest_checkpoint(tmp_path / "limited" / "run") / "state.json").read_text())["step"] == 1


def _two_processes(tmp_path, max_steps: int, extra: list[str] = ()):
    exe = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cli = os.path.join(os.path.dirname(sys.executable), "refine-by-align")
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": "tiny", "max_steps": max_steps, "batch_size": 2,
                               "data_root": None, "synthetic_weight": 1.0, "synthetic_pool": 8, "num_workers": 0,
                               "eval_every": 0, "checkpoint_every": 2, "log_every": 1, "warmup_steps": 1, "attn_min_side": 8,
                               "mode_weights": {"alignment": 0.5, "refinement": 0.5}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         cli, "-q", "train", "--config", str(cfg), "--output", str(tmp_path / "run"), *extra],
        capture_output=True, text=True, timeout=300, env=env,
    )
    return p


def test_on_object_drops_points_on_the_reference_background():
    from refine_by_align.training.losses import on_object

    ref = torch.zeros(1, 3, 8, 8)
    ref[..., :, :4] = 0.5  # object on the left half
    coords = torch.zeros(1, 2, 2, 2)
    coords[0, 0] = torch.tensor([[0.2, 0.8], [0.2, 0.8]])  # x: left (object), right (background)
    coords[0, 1] = 0.5
    out = on_object(coords, ref)
    assert torch.isfinite(out[0, :, :, 0]).all()
    assert torch.isnan(out[0, :, :, 1]).all()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_diffusion_target_inverts_to_x0(kind):
    """Whatever the parameterisation, the scheduler's own x0 formula recovers x0 from the target."""
    from diffusers import DDPMScheduler

    from refine_by_align.training.losses import diffusion_target

    sch = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(2, 3, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    zt = sch.add_noise(x0, noise, t)
    target = diffusion_target(sch, x0, noise, t)
    a = sch.alphas_cumprod[t].view(-1, 1, 1, 1)
    if kind == "epsilon":
        rec = (zt - (1 - a).sqrt() * target) / a.sqrt()
    elif kind == "v_prediction":
        rec = a.sqrt() * zt - (1 - a).sqrt() * target
    else:
        rec = target
    assert torch.allclose(rec, x0, atol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        sch.register_to_config(prediction_type="flow")
        diffusion_target(sch, x0, noise, t)


def test_init_from_copies_weights_and_refuses_a_different_model(tmp_path):
    from refine_by_align.config import get_config
    from refine_by_align.models.refiner import RefineByAlignModel
    from refine_by_align.training.train import init_weights

    torch.manual_seed(3)
    src = RefineByAlignModel.from_model_config(get_config("tiny"))
    src.save_pretrained(tmp_path / "src", safe_serialization=True)
    torch.manual_seed(4)
    dst = RefineByAlignModel.from_model_config(get_config("tiny"))
    assert not torch.equal(dst.unet.conv_in.weight, src.unet.conv_in.weight)
    init_weights(dst, tmp_path / "src")
    assert all(torch.equal(a, b) for a, b in zip(dst.state_dict().values(), src.state_dict().values()))
    other = RefineByAlignModel.from_model_config(get_config("default"))
    with pytest.raises(ValueError, match="does not fit"):
        init_weights(other, tmp_path / "src")


def test_split_run_starts_from_init_weights(tmp_path):
    """A stage-2 run (init_from) starts from the stage-1 export, not from a fresh init."""
    train(_tc(max_steps=1, eval_every=0), tmp_path / "stage1", progress=False)
    from refine_by_align.models.refiner import RefineByAlignModel

    w1 = RefineByAlignModel.load(tmp_path / "stage1" / "weights").state_dict()
    tc2 = _tc(max_steps=1, eval_every=0, init_from=str(tmp_path / "stage1" / "weights"), lr_unet=0.0, lr_projector=0.0, lr_encoder=0.0, ema_decay=0.0)
    train(tc2, tmp_path / "stage2", progress=False)
    w2 = RefineByAlignModel.load(tmp_path / "stage2" / "weights").state_dict()
    assert all(torch.allclose(w1[k], w2[k]) for k in w1)


def test_shipped_model_is_what_its_recipe_and_preset_say():
    """weights/default: config.json is the `default` preset; train_config.json is the stage-4
    recipe as run (only where the data were read differs, and the recipe now names the Telea
    prefill the preset then had: the preset runs the weights on the harmonic one); the recipes
    chain by init_from."""
    from refine_by_align.config import ModelConfig, get_config
    from refine_by_align.pipelines.pipeline import default_model_dir

    folder = default_model_dir()
    spec = json.loads((folder / "config.json").read_text())["spec"]
    assert ModelConfig.from_dict(spec) == get_config("default")
    ran = json.loads((folder / "train_config.json").read_text())
    recipe = dataclasses.asdict(load_train_config("default-stage4"))
    assert recipe["model_overrides"].pop("hole_fill") == "telea"
    assert {k: v for k, v in ran.items() if k not in ("data_root", "trained_steps")} == {k: v for k, v in recipe.items() if k != "data_root"}
    assert ran["trained_steps"] == recipe["max_steps"]
    trained = load_train_config("default-stage4").model_config()
    shipped = get_config("default")
    assert trained.hole_fill == "telea" and (shipped.hole_fill, shipped.base_fill) == ("harmonic", "mixed-local")
    assert dataclasses.replace(trained, hole_fill="harmonic", base_fill="mixed-local") == shipped  # otherwise the preset's architecture and settings
    outputs = {"default": "runs/default", "default-stage2": "runs/stage2", "default-stage3": "runs/stage3"}
    for prev, nxt in (("default", "default-stage2"), ("default-stage2", "default-stage3"), ("default-stage3", "default-stage4")):
        assert load_train_config(nxt).init_from == outputs[prev] + "/weights"
    assert load_train_config("default-stage3").model_config().resolution == 32


def test_data_scale_fields_reach_the_dataset(tmp_path):
    """synthetic_size sets the procedural objects' side, photo_max_side the photos' longest side."""
    from PIL import Image

    from refine_by_align.training.train import build_dataset

    for subject in ("alpha", "beta"):
        (tmp_path / subject).mkdir()
        Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(tmp_path / subject / "00.jpg")
        m = np.zeros((120, 160), np.uint8)
        m[20:100, 30:130] = 255
        Image.fromarray(m).save(tmp_path / subject / "00_mask.png")
    tc = _tc(synthetic_size=48, photo_max_side=100, data_root=str(tmp_path))
    ds = build_dataset(tc, tc.model_config())
    synthetic, photos = ds.sources
    assert synthetic.get(0)[0].shape == (48, 48, 3)
    image, mask = photos._views["alpha"].get(0)
    assert image.shape == (75, 100, 3) and mask.shape == (75, 100)


def test_paper_recipe_starts_from_sd15_inpainting_and_dinov2():
    """recipes/paper-sd15: the paper preset's architecture, with the public weights it starts from
    named (hub ids; not downloaded here) and the paper's learning rates (A.3)."""
    import dataclasses

    from refine_by_align.config import get_config

    rc = load_train_config("paper-sd15")
    cfg = rc.model_config()
    assert (cfg.unet_pretrained, cfg.unet_subfolder) == ("stable-diffusion-v1-5/stable-diffusion-inpainting", "unet")
    assert (cfg.vae_pretrained, cfg.vae_subfolder) == ("stable-diffusion-v1-5/stable-diffusion-inpainting", "vae")
    assert cfg.encoder.pretrained == "facebook/dinov2-base" and cfg.encoder.freeze
    paper = get_config("paper")
    same = dataclasses.replace(
        cfg, unet_pretrained=None, unet_subfolder=None, vae_pretrained=None, vae_subfolder=None, encoder=dataclasses.replace(cfg.encoder, pretrained=None)
    )
    assert same == paper
    assert (rc.lr_unet, rc.lr_projector) == (1e-5, 4e-5)


def test_run_starts_from_a_pretrained_unet(tmp_path):
    """A recipe naming unet_pretrained trains from those weights (lr 0: the export is them)."""
    from diffusers import UNet2DConditionModel

    from refine_by_align.config import get_config
    from refine_by_align.models.denoiser import build_unet
    from refine_by_align.models.refiner import RefineByAlignModel

    torch.manual_seed(5)
    src = build_unet(get_config("tiny"))
    src.save_pretrained(tmp_path / "sd" / "unet", safe_serialization=True)
    over = {"unet_pretrained": str(tmp_path / "sd"), "unet_subfolder": "unet"}
    tc = _tc(max_steps=1, eval_every=0, model_overrides=over, lr_unet=0.0, lr_projector=0.0, lr_encoder=0.0, ema_decay=0.0)
    train(tc, tmp_path / "run", progress=False)
    got = RefineByAlignModel.load(tmp_path / "run" / "weights").unet.state_dict()
    want = UNet2DConditionModel.from_pretrained(tmp_path / "sd", subfolder="unet").state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_warp_input_model_trains_from_a_model_without_the_channel(tmp_path):
    """hole_fill "warp" + warp_channel: the pairs carry the warp and trust, the loop feeds them,
    and init_from a model without the trust channel widens it (zero weights for the channel)."""
    train(_tc(max_steps=1, eval_every=0), tmp_path / "stage1", progress=False)
    tc = _tc(max_steps=2, eval_every=2, init_from=str(tmp_path / "stage1" / "weights"),
             model_overrides={"hole_fill": "warp", "warp_channel": True})
    rec = train(tc, tmp_path / "warp", progress=False)
    assert rec["step"] == 2 and np.isfinite(rec["loss"])
    from refine_by_align.models.refiner import RefineByAlignModel

    m = RefineByAlignModel.load(tmp_path / "warp" / "weights")
    assert m.cfg.hole_fill == "warp" and m.cfg.warp_channel and m.unet.conv_in.in_channels == 8


def test_prefill_from_the_workers_gives_the_models_own_inputs():
    """A classical hole fill is computed in the data workers (PairConfig.prefill, set from the
    model's hole_fill) and the training step uses it: the U-Net's inputs are bit-identical to
    those of the model filling the collated batch itself; a prefill that does not fit is refused."""
    from refine_by_align.models.refiner import RefineByAlignModel
    from refine_by_align.training.train import build_dataset

    tc = _tc(model_overrides={"hole_fill": "harmonic"})
    mcfg = tc.model_config()
    ds = build_dataset(tc, mcfg)
    assert ds.cfg.prefill == "harmonic"
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    hole = batch["mask"] > 0.5
    assert hole.any() and not torch.equal(batch["prefill"], batch["image"])  # the hole is filled ...
    assert torch.equal(batch["prefill"].masked_select(~hole.expand_as(batch["image"])), batch["image"].masked_select(~hole.expand_as(batch["image"])))  # ... only the hole
    torch.manual_seed(0)
    model = RefineByAlignModel.from_model_config(mcfg).eval()
    own = model.inpainting_inputs(batch["image"], batch["mask"])
    given = model.inpainting_inputs(batch["image"], batch["mask"], prefill=batch["prefill"])
    for a, b in zip(own, given):
        assert torch.equal(a, b)
    other = torch.where(hole, torch.zeros_like(batch["prefill"]), batch["prefill"])  # a prefill that is not the model's
    assert not torch.equal(model.inpainting_inputs(batch["image"], batch["mask"], prefill=other)[2], own[2])  # it is used as given
    with pytest.raises(ValueError, match="does not match"):
        model.inpainting_inputs(batch["image"], batch["mask"], prefill=batch["prefill"][:, :, :-1])
    assert build_dataset(_tc(), _tc().model_config()).cfg.prefill is None  # the tiny preset zeroes its hole: nothing to fill
    zero = RefineByAlignModel.from_model_config(_tc().model_config())
    with pytest.raises(ValueError, match="classical hole fill"):
        zero.inpainting_inputs(batch["image"], batch["mask"], prefill=batch["prefill"])
    warp = RefineByAlignModel.from_model_config(dataclasses.replace(_tc().model_config(), hole_fill="warp"))
    with pytest.raises(ValueError, match="classical hole fill"):
        warp.inpainting_inputs(batch["image"], batch["mask"], prefill=batch["prefill"])


def test_time_limit_stops_with_a_checkpoint_and_weights_and_resume_finishes(tmp_path):
    """train(time_limit=...) stops at the first step past the limit as at max_steps (checkpoint,
    log line, exported weights); --resume then runs the schedule to its end."""
    tc = _tc(max_steps=4, eval_every=0, log_every=10, checkpoint_every=10)  # only the stop writes a log line and a checkpoint
    rec = train(tc, tmp_path, progress=False, time_limit=0.0)
    assert rec["step"] == 1
    assert json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())["step"] == 1
    assert json.loads((tmp_path / "weights" / "train_config.json").read_text())["trained_steps"] == 1
    rec = train(tc, tmp_path, resume=True, progress=False)
    assert rec["step"] == 4
    steps = [json.loads(l)["step"] for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 4]


def test_cli_refuses_a_time_limit_that_is_not_positive(tmp_path, capsys):
    from refine_by_align.cli import main

    for bad in ("0", "-5", "nan", "inf"):
        assert main(["train", "--config", "tiny", "--output", str(tmp_path / "run"), "--time-limit", bad]) == 2
        assert "--time-limit must be a positive number of seconds" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_stage6_recipe_fine_tunes_the_shipped_weights_on_the_prefill_they_run_on():
    """default-stage6 (tried, not shipped: MODEL_CARD.md) starts from the shipped weights and
    trains exactly the shipped preset (architecture, harmonic prefill, settings)."""
    from refine_by_align.config import get_config

    tc = load_train_config("default-stage6")
    assert tc.init_from == "src/refine_by_align/weights/default" and tc.lr_schedule == "cosine"
    trained, shipped = tc.model_config(), get_config("default")
    assert trained.hole_fill == shipped.hole_fill == "harmonic"
    assert trained == shipped


def test_bf16_falls_back_to_fp32_where_the_cpu_would_emulate_it(tmp_path, monkeypatch, capsys):
    """The shipped recipes train in bf16 (on a GPU); on a CPU without native bf16 that ran emulated,
    about 8x slower, without a word. Now it trains in fp32, says so, and the saved config says so;
    where bf16 is native it is kept."""
    import refine_by_align.perf.ceiling as ceiling

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ceiling, "native_bf16", lambda device="cpu": False)
    train(_tc(max_steps=1, eval_every=0, mixed_precision="bf16"), tmp_path / "emulated", progress=False)
    assert "runs emulated" in capsys.readouterr().out
    assert json.loads((tmp_path / "emulated" / "train_config.json").read_text())["mixed_precision"] == "no"
    from refine_by_align.training.train import _precision_for_device

    monkeypatch.setattr(ceiling, "native_bf16", lambda device="cpu": True)  # (accelerate's precision is set once a process)
    assert _precision_for_device(_tc(mixed_precision="bf16")) == (_tc(mixed_precision="bf16"), "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ceiling, "native_bf16", lambda device="cpu": False)
    assert _precision_for_device(_tc(mixed_precision="bf16"))[0].mixed_precision == "bf16"  # a GPU's bf16 is its own
