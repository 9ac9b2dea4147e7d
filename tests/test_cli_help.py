"""Every subcommand's --help ends with a runnable-looking example; every option has a description."""

import argparse

import pytest

from refine_by_align.cli import EXAMPLES, build_parser


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_subcommand_help_shows_an_example():
    commands = _subcommands()
    assert set(EXAMPLES) == set(commands), set(EXAMPLES) ^ set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        assert "\nexample:\n  refine-by-align " + name + " " in text, name
        assert text.rstrip().endswith(EXAMPLES[name].splitlines()[-1].strip()), name  # kept as written (raw)
        for option in (a for a in sub._actions if a.option_strings and a.dest != "help"):
            if name in ("refine", "align", "serve"):  # the commands a new user meets first: every option described
                assert option.help, f"{name} {option.option_strings[0]} has no description"


def test_example_options_exist():
    """The options each example uses are options of its command (an example must not rot)."""
    commands = _subcommands()
    for name, example in EXAMPLES.items():
        words = [w for w in example.replace("\\\n", " ").split() if w.startswith("--")]
        known = {s for a in commands[name]._actions for s in a.option_strings}
        assert set(words) <= known, (name, set(words) - known)


def test_bench_quality_help_names_every_method():
    """bench-quality's --method help lists every registered method (it is written out by hand so
    that --help stays quick; a method added to the registry must be added there too)."""
    from refine_by_align.evaluation import METHODS

    method = next(a for a in _subcommands()["bench-quality"]._actions if a.dest == "method")
    listed = {w.strip(" ,") for w in method.help.split(",")[0].split("|")}
    assert listed == set(METHODS), listed ^ set(METHODS)


def test_quiet_after_the_command_and_version(capsys):
    """-q is taken before or after the command (after it, absent, the top level's value stands);
    --version says the package's version."""
    import refine_by_align
    from refine_by_align.cli import build_parser

    base = ["--image", "a.png", "--mask", "m.png", "--reference", "r.png", "--output", "o.png"]
    p = build_parser()
    assert p.parse_args(["refine", "-q", *base]).quiet
    assert p.parse_args(["-q", "refine", *base]).quiet
    assert not p.parse_args(["refine", *base]).quiet
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"refine-by-align {refine_by_align.__version__}"
