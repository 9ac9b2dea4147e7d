"""allocator.keep_freed_memory: freed arrays are reused, not faulted in again; left alone where the
environment gives glibc a malloc setting of its own. Each check runs in a fresh process (the
setting is the whole process's)."""

import os
import subprocess
import sys
import textwrap

import pytest

from refine_by_align import allocator

glibc = pytest.mark.skipif(allocator._glibc() is None, reason="glibc's malloc only (this C library is not glibc)")

# six 8 MB tensors alive at once, then freed, 23 times over: the page faults of the last 20
# rounds (the first ones fault their pages in whichever way, and glibc settles where it puts them)
PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from refine_by_align.allocator import keep_freed_memory, allocator_setting
    made = keep_freed_memory() if sys.argv[1] == "keep" else None
    def round_():
        ts = [torch.empty(2 << 20) for _ in range(6)]  # 2M float32 = 8 MB each
        for t in ts:
            t.fill_(1.0)
    for _ in range(3):
        round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        round_()
    print(made, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, allocator_setting(), sep="|")
    """
)


def _clean_env(**env) -> dict[str, str]:
    """This process's environment without any malloc setting of its own, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", allocator.ENV) and not k.startswith("MALLOC_")}
    return {**clean, **env}


def _probe(mode: str, **env) -> tuple[str, int, str]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=_clean_env(**env), timeout=120, check=True).stdout
    made, faults, setting = out.strip().splitlines()[-1].split("|")
    return made, int(faults), setting


@glibc
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    made, kept_faults, setting = _probe("keep")
    _, default_faults, _ = _probe("default")
    pages = 20 * 6 * (8 << 20) // 4096  # every page of every round
    assert made == "True" and "keeps freed memory" in setting
    assert default_faults > pages // 10  # glibc's default hands freed blocks back: faulted in again
    assert kept_faults < pages // 20  # kept: reused (glibc may fault a block in once more while it settles)


@glibc
@pytest.mark.parametrize("env", [{allocator.ENV: "system"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=65536"}, {"MALLOC_TRIM_THRESHOLD_": "65536"}])
def test_a_malloc_setting_of_the_users_own_is_left_alone(env):
    made, faults, setting = _probe("keep", **env)
    assert made == "False" and setting.startswith("left to the environment")
    if allocator.ENV in env:  # (glibc's defaults: faulted in again)
        assert faults > 20 * 6 * (8 << 20) // 4096 // 10


def test_thresholds_out_of_range_are_refused():
    with pytest.raises(ValueError, match="thresholds"):
        allocator.keep_freed_memory(mmap_threshold=0)
    with pytest.raises(ValueError, match="thresholds"):
        allocator.keep_freed_memory(trim_threshold=2**31)


@glibc
def test_the_command_line_keeps_freed_memory():
    """Every command runs with the setting (cli.main makes it before the command runs)."""
    code = "import sys; from refine_by_align import cli, allocator; cli.COMMANDS['plot'].run = lambda a: print(allocator.allocator_setting()) or 0; sys.exit(cli.main(['plot', 'x.json']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "keeps freed memory" in out.stdout
