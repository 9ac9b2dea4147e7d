"""locks.hold_lock: exclusive and shared advisory locks between processes (flock is per open file,
so two opens in one process stand for two processes)."""

import pytest

from refine_by_align.locks import hold_lock

fcntl = pytest.importorskip("fcntl")


def test_exclusive_lock_refuses_a_second_holder_until_released(tmp_path):
    path = tmp_path / ".lock"
    first = hold_lock(path)
    assert first is not None and path.is_file()
    assert hold_lock(path) is None
    assert hold_lock(path, shared=True) is None
    first.close()
    again = hold_lock(path)
    assert again is not None
    again.close()


def test_shared_locks_coexist_and_exclude_an_exclusive_one(tmp_path):
    path = tmp_path / ".lock"
    a, b = hold_lock(path, shared=True), hold_lock(path, shared=True)
    assert a is not None and b is not None
    assert hold_lock(path) is None
    a.close()
    assert hold_lock(path) is None  # (b still holds it)
    b.close()
    c = hold_lock(path)
    assert c is not None
    c.close()


def test_waiting_lock_is_taken_once_free(tmp_path):
    path = tmp_path / ".lock"
    with hold_lock(path, wait=True) as f:
        assert hold_lock(path) is None
    assert f.closed
    g = hold_lock(path)
    assert g is not None
    g.close()
