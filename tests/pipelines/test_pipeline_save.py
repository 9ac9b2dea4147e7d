"""RefineByAlignPipeline.save_pretrained passes its options on (it used to drop them silently)."""

import pytest
import torch

from refine_by_align.pipelines.pipeline import RefineByAlignPipeline


def test_save_options_reach_the_model_and_pickles_are_refused(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 1  # the option reached diffusers' save_pretrained
    again = RefineByAlignPipeline.from_pretrained(tmp_path / "sharded", device="cpu")
    for (k, a), (_, b) in zip(sorted(tiny_pipe.model.state_dict().items()), sorted(again.model.state_dict().items())):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="safetensors only"):
        tiny_pipe.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert not (tmp_path / "pickled").exists()
