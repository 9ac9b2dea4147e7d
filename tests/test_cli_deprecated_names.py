"""Issue 14 item 5: the renamed options and commands. The old spellings (align's --timestep / --layer,
refine's and bench's --align-timestep / --align-layer, the commands bench and benchmark) keep working
for one release, each use printing one deprecation line on stderr."""

import json

import pytest

from refine_by_align.cli import DEPRECATED_COMMANDS, build_parser, main
from refine_by_align.demo.examples import EXAMPLES_DIR


@pytest.fixture
def files(tmp_path, write_cli_inputs):
    return write_cli_inputs(tmp_path)


def _call(accepted, files, command, *extra):
    argv = ["-q", command, "--image", str(files / "image.png"), "--mask", str(files / "mask.png"),
            "--reference", str(files / "reference.png"), "--output", str(files / "out.png"), *extra]
    with pytest.raises(accepted) as e:
        main(argv)
    return e.value.args[0]


def _line(old: str, new: str) -> str:
    return f"refine-by-align: {old} is deprecated, use {new} (the old name goes in the next release)"


@pytest.mark.parametrize("command, old_t, old_l, t_key, l_key", [
    ("align", "--timestep", "--layer", "alignment_timestep", "alignment_layer"),
    ("refine", "--align-timestep", "--align-layer", "alignment_timestep", "alignment_layer"),
])
def test_old_alignment_flags_still_work_with_one_deprecation_line_each(files, capsys, stub_cli_model, command, old_t, old_l, t_key, l_key):
    kwargs = _call(stub_cli_model, files, command, old_t, "7", old_l, "3")
    assert (kwargs[t_key], kwargs[l_key]) == (7, 3)
    err = capsys.readouterr().err.splitlines()
    assert err == [_line(old_t, "--alignment-timestep"), _line(old_l, "--alignment-layer")]
    kwargs = _call(stub_cli_model, files, command, "--alignment-timestep", "8", "--alignment-layer", "2")  # the new names: no line
    assert (kwargs[t_key], kwargs[l_key]) == (8, 2) and capsys.readouterr().err == ""


def test_old_and_new_flags_fill_one_attribute():
    for command, old in (("align", "--timestep"), ("refine", "--align-timestep"), ("bench-quality", "--align-timestep")):
        head = ["bench-quality", "cases", "--output", "o"] if command == "bench-quality" else [
            command, "--image", "i", "--mask", "m", "--reference", "r", "--output", "o"]
        args = build_parser().parse_args([*head, old, "5"])
        assert args.alignment_timestep == 5 and not hasattr(args, old.lstrip("-").replace("-", "_"))
        assert build_parser().parse_args(head).alignment_timestep is None


def test_an_old_flag_out_of_range_is_named_by_its_new_name(files, capsys, stub_cli_model):
    argv = ["-q", "align", "--image", str(files / "image.png"), "--mask", str(files / "mask.png"),
            "--reference", str(files / "reference.png"), "--output", str(files / "out.png"), "--timestep", "5000"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == _line("--timestep", "--alignment-timestep") and len(err) == 2
    assert err[1].startswith("refine-by-align align: error: --alignment-timestep 5000 is out of range")


def test_old_command_bench_still_runs_with_one_deprecation_line(tmp_path, capsys):
    rc = main(["-q", "bench", str(EXAMPLES_DIR), "--output", str(tmp_path / "res"), "--method", "keep", "--limit", "1"])
    assert rc == 0
    assert json.loads((tmp_path / "res" / "metrics.json").read_text())["summary"]["ALL"]["cases"] == 1
    assert capsys.readouterr().err.splitlines() == [_line("bench", "bench-quality")]


@pytest.mark.parametrize("old, new", sorted(DEPRECATED_COMMANDS.items()))
def test_old_command_names_answer_help_as_the_new_ones(capsys, old, new):
    with pytest.raises(SystemExit) as e:
        main([old, "--help"])
    assert e.value.code == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [_line(old, new)]
    assert out.startswith(f"usage: refine-by-align {new} ")


def test_help_lists_the_new_command_names():
    text = build_parser().format_help()
    assert "bench-quality" in text and "bench-speed" in text
    listing = text.split("positional arguments:")[1].split("options:")[0]
    assert not any(line.split()[0] in DEPRECATED_COMMANDS for line in listing.splitlines() if line.strip())
