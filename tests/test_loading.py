"""load_pipeline: the one loader every entry point uses, and its one error type."""

from pathlib import Path

import pytest
import torch

from refine_by_align.io import InputError
from refine_by_align.loading import load_pipeline


def test_presets_load_with_random_weights_on_the_asked_device_and_dtype():
    pipe = load_pipeline("tiny", device="cpu", dtype=torch.bfloat16)
    assert pipe.random_weights
    w = next(pipe.model.parameters())
    assert w.device.type == "cpu" and w.dtype == torch.bfloat16


def test_a_saved_folder_loads(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "m")
    pipe = load_pipeline(tmp_path / "m", device="cpu")
    assert not pipe.random_weights
    assert pipe.model.cfg.to_dict() == tiny_pipe.model.cfg.to_dict()


def test_unknown_name_is_one_line_naming_the_model_and_where_it_looked(tmp_path):
    with pytest.raises(InputError) as e:
        load_pipeline("no-such-model-here")
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in msg
    assert msg.startswith("model 'no-such-model-here':") and "tiny" in msg
    assert str(Path.cwd() / "no-such-model-here") in msg
    with pytest.raises(InputError, match=f"no model folder at '{tmp_path / 'nowhere'}'"):
        load_pipeline(tmp_path / "nowhere")


def test_unusable_folder_is_one_line_naming_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as e:
        load_pipeline(str(tmp_path / "empty"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"model '{tmp_path / 'empty'}' (looked in '{tmp_path / 'empty'}')")
    assert "config.json" in msg
