"""Issue 16 item 9: a damaged or hostile model folder is one line at load time (the CLI's exit 2, the
server's start-up error), never a traceback or a failure at inference: weights that are not
safetensors, a truncated or empty file, tensors of the wrong shape, absurd config values, an index
naming files outside the folder."""

import json
import pickle
import shutil
from pathlib import Path

import pytest

from refine_by_align.config import ModelConfig, get_config
from refine_by_align.io import InputError
from refine_by_align.loading import load_pipeline
from refine_by_align.models.refiner import RefineByAlignModel

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny"
    RefineByAlignModel.from_model_config(get_config("tiny")).save_pretrained(folder, safe_serialization=True)
    return folder


def _copy(saved: Path, tmp_path: Path, spec_edit=None) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    if spec_edit is not None:
        config = json.loads((folder / "config.json").read_text())
        spec_edit(config["spec"])
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _refused(folder: Path, *needles: str) -> str:
    with pytest.raises(InputError) as e:
        load_pipeline(str(folder))
    message = str(e.value)
    assert "\n" not in message, message
    for n in needles:
        assert n in message, message
    return message


def test_the_saved_folder_loads(saved_tiny):
    assert load_pipeline(str(saved_tiny)).model.cfg == get_config("tiny")


@pytest.mark.parametrize("content, needle", [
    (pickle.dumps({"unet.conv_in.weight": [1.0, 2.0]}), "not a readable safetensors file"),
    (b"", "(0 bytes) is not a readable safetensors file"),
    (None, "not a readable safetensors file"),  # truncated: the first 1000 bytes of the real file
])
def test_weights_that_are_not_a_safetensors_file(saved_tiny, tmp_path, content, needle):
    folder = _copy(saved_tiny, tmp_path)
    weights = folder / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000] if content is None else content)
    _refused(folder, needle, WEIGHTS)


def test_weights_of_the_wrong_shape(saved_tiny, tmp_path):
    """The config asks for wider blocks than the file holds: named at load, one line."""
    folder = _copy(saved_tiny, tmp_path, lambda spec: spec["unet"].update(block_out_channels=[8, 32]))
    _refused(folder, "weights have the wrong shape", "where the config builds")


@pytest.mark.parametrize("field, value, needle", [
    ("unet.block_out_channels", [32768, 32768], "unet.block_out_channels must be 1 to 8 integers in 1..4096"),
    ("grid_size", 100000, "grid_size must be an integer in 1..64, got 100000"),
    ("resolution", 0, "resolution must be an integer in 8..2048, got 0"),
    ("resolution", -64, "resolution must be an integer in 8..2048, got -64"),
    ("resolution", 10**9, "resolution must be an integer in 8..2048, got 1000000000"),
    ("resolution", 37, "resolution must be a multiple of 2"),
    ("resolution", "16", "resolution must be an integer in 8..2048, got '16'"),
    ("default_guidance", 1e39, "default_guidance must be a finite number in 0..50"),
    ("default_steps", 0, "default_steps must be an integer in 1..1000"),
    ("zoom_grow", float("nan"), "zoom_grow must be a finite number"),
    ("latent", "vae-xl", "latent must be one of pixel, vae-kl, vae-tiny"),
    ("alignment_timestep", 5000, "alignment_timestep must be an integer in 0..999"),
    ("encoder.hidden_size", 17, "encoder.hidden_size must be a multiple of encoder.num_attention_heads"),
])
def test_absurd_config_values(saved_tiny, tmp_path, field, value, needle):
    def edit(spec):
        *parents, last = field.split(".")
        target = spec
        for p in parents:
            target = target[p]
        target[last] = value

    folder = _copy(saved_tiny, tmp_path, edit)
    _refused(folder, "model config: " + needle)


def test_config_ranges_hold_for_every_preset():
    for name in ("tiny", "default", "paper"):
        cfg = get_config(name)
        cfg.validate()
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("target", ["../outside.safetensors", "/etc/outside.safetensors", "sub/../../outside.safetensors", "link.safetensors"])
def test_index_naming_a_file_outside_the_folder_is_refused(saved_tiny, tmp_path, target):
    folder = _copy(saved_tiny, tmp_path)
    outside = tmp_path / "outside.safetensors"
    shutil.move(folder / WEIGHTS, outside)  # a valid weights file, just not in the folder
    (folder / "link.safetensors").symlink_to(outside)
    index = {"metadata": {}, "weight_map": {"unet.conv_in.weight": target}}
    (folder / f"{WEIGHTS}.index.json").write_text(json.dumps(index))
    _refused(folder, "outside the model folder: refused")


def test_index_inside_the_folder_loads_and_a_broken_index_is_one_line(saved_tiny, tmp_path):
    folder = _copy(saved_tiny, tmp_path)
    shutil.move(folder / WEIGHTS, folder / "part-1.safetensors")
    (folder / f"{WEIGHTS}.index.json").write_text(json.dumps({"weight_map": {"unet.conv_in.weight": "part-1.safetensors"}}))
    assert load_pipeline(str(folder)).model.cfg == get_config("tiny")
    (folder / f"{WEIGHTS}.index.json").write_text("{not json")
    _refused(folder, "is not a valid index file")
    (folder / f"{WEIGHTS}.index.json").write_text(json.dumps({"weight_map": {"a": "missing.safetensors"}}))
    _refused(folder, "'missing.safetensors', which is not in the model folder")


def test_config_without_a_spec_is_one_line(saved_tiny, tmp_path):
    folder = _copy(saved_tiny, tmp_path)
    (folder / "config.json").write_text(json.dumps({"_class_name": "RefineByAlignModel"}))
    _refused(folder, "config.json does not describe a model")


def test_cli_reports_a_renamed_pickle_in_one_line_exit_2(saved_tiny, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from refine_by_align.cli import main

    folder = _copy(saved_tiny, tmp_path)
    (folder / WEIGHTS).write_bytes(pickle.dumps({"x": 1}))
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "i.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    rc = main(["-q", "align", "--model", str(folder), "--image", str(tmp_path / "i.png"), "--mask", str(tmp_path / "m.png"),
               "--reference", str(tmp_path / "i.png"), "--output", str(tmp_path / "o.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "is not a readable safetensors file" in err[0] and not (tmp_path / "o.png").exists()


def test_weights_with_nan_are_refused_at_load(saved_tiny, tmp_path):
    """Issue 16 item 2's model case: weights that are all NaN used to give a black result reported as
    success; they are refused when the folder is loaded."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = _copy(saved_tiny, tmp_path)
    state = load_file(folder / WEIGHTS)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, folder / WEIGHTS)
    _refused(folder, "weight tensors hold NaN or infinite values", "damaged")
