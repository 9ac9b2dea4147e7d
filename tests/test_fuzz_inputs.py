"""Issue 16, "Done when": a short, deterministic fuzz run over the command line's numeric options
and the HTTP API's form fields. Whatever the value, the answer is a usage error (one line, exit 2;
argparse's own for text that is not a number), a 400 with a JSON error, or a call that goes ahead
with a value inside the documented range, never a traceback or a 500. The model is a stand-in that
records the accepted values (the ranges, not the refinement, are under test)."""

import math

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refine_by_align import cli
from refine_by_align.server import ServerSettings, create_app

MAX_SEED = 2**63 - 1
FUZZ = settings(max_examples=40, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# text a user (or a script gone wrong) might pass for a number
VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-1e6, max_value=1e6).map(lambda x: f"{x:.3g}"),
    st.sampled_from(["", " ", "1e400", "-0", "0x10", "1_000", "\u0663", "NaN", "-inf", "2**63", "1e39", "50.0000001",
                     "9223372036854775807", "9223372036854775808", "-9223372036854775809", "18446744073709551616", "+7",
                     " 3 ", "3.0", "true", "None"]),
    st.text(max_size=6),
)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, write_cli_inputs):
    return write_cli_inputs(tmp_path_factory.mktemp("fuzz"))


# (command, option, keyword the pipeline receives it as, the accepted range: a predicate on the value)
CLI_OPTIONS = [
    ("refine", "--steps", "num_inference_steps", lambda v: v is None or 1 <= v <= 1000),
    ("refine", "--guidance", "guidance_scale", lambda v: v is None or (math.isfinite(v) and 0 <= v <= 50)),
    ("refine", "--seed", "seed", lambda v: 0 <= v <= MAX_SEED),
    ("refine", "--samples", "num_samples", lambda v: v is None or 1 <= v <= 64),
    ("refine", "--alignment-timestep", "alignment_timestep", lambda v: v is None or 0 <= v < 1000),
    ("refine", "--alignment-layer", "alignment_layer", lambda v: v is None or 0 <= v < 16),
    ("align", "--alignment-timestep", "alignment_timestep", lambda v: v is None or 0 <= v < 1000),
    ("align", "--alignment-layer", "alignment_layer", lambda v: v is None or 0 <= v < 16),
    ("align", "--seed", "seed", lambda v: 0 <= v <= MAX_SEED),
]


@FUZZ
@given(which=st.sampled_from(CLI_OPTIONS), value=VALUES)
def test_cli_numeric_options(cli_files, tmp_path, capsys, stub_cli_model, which, value):
    command, option, keyword, in_range = which
    argv = ["-q", command, "--model", "tiny", "--image", str(cli_files / "image.png"), "--mask", str(cli_files / "mask.png"),
            "--reference", str(cli_files / "reference.png"), "--output", str(tmp_path / "out.png"), f"{option}={value}"]
    capsys.readouterr()
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse: not a number at all
        assert e.code == 2
        assert "error:" in capsys.readouterr().err
        return
    except stub_cli_model as e:
        accepted = e.args[0][keyword]
        assert in_range(accepted), (option, value, accepted)
        return
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and option.lstrip("-").split("-")[-1] in err[0].lower(), (option, value, err)
    assert not (tmp_path / "out.png").exists()


class _RecordingPipe:
    """The server's stand-in: records what a job was called with and answers at once."""

    random_weights = False

    def __init__(self):
        self.calls = []

    def progress_bar(self, iterable=None, total=None):
        raise AssertionError("not used")

    def __call__(self, image, mask, reference, reference_mask=None, **kwargs):
        from refine_by_align.io import to_rgb
        from refine_by_align.pipelines.pipeline import RefineOutput
        from refine_by_align.zoom import Box

        self.calls.append(kwargs)
        img = to_rgb(image)
        return RefineOutput(img, None, None, Box(0, 0, img.width, img.height), Box(0, 0, 1, 1), {"total": 0.0})


@pytest.fixture(scope="module")
def api_files(cli_files):
    return {role: (f"{role}.png", (cli_files / f"{role}.png").read_bytes(), "image/png") for role in ("image", "mask", "reference")}


@pytest.fixture(scope="module")
def api(request):
    pipe = _RecordingPipe()
    with TestClient(create_app(pipe, ServerSettings())) as client:
        client.pipe = pipe
        yield client


@FUZZ
@given(steps=st.none() | VALUES, guidance=st.none() | VALUES, seed=st.none() | VALUES)
def test_api_form_fields(api, api_files, steps, guidance, seed):
    data = {k: v for k, v in (("steps", steps), ("guidance", guidance), ("seed", seed)) if v is not None}
    before = len(api.pipe.calls)
    r = api.post("/api/refine", files=api_files, data=data)
    assert r.status_code in (200, 400), (data, r.status_code, r.text)
    if r.status_code == 400:
        error = r.json()["error"]
        assert error and "\n" not in error
        assert len(api.pipe.calls) == before
        return
    call = api.pipe.calls[-1]
    assert call["num_inference_steps"] is None or 1 <= call["num_inference_steps"] <= 1000
    assert call["guidance_scale"] is None or (math.isfinite(call["guidance_scale"]) and 0 <= call["guidance_scale"] <= 50)
    assert 0 <= call["seed"] <= MAX_SEED
