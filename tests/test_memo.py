"""The content-keyed memory of recent results (memo.py)."""

import numpy as np
import pytest

from refine_by_align.memo import ContentCache


def test_keys_follow_content_not_identity():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert ContentCache.key(a, 1) == ContentCache.key(a.copy(), 1)  # same bytes, another object
    assert ContentCache.key(a, 1) != ContentCache.key(a, 2)  # other settings
    b = a.copy()
    b[0, 0] = 99
    assert ContentCache.key(a) != ContentCache.key(b)  # one pixel changed
    assert ContentCache.key(a) != ContentCache.key(a.reshape(4, 3))  # same bytes, other shape
    assert ContentCache.key(a) != ContentCache.key(a.astype(np.int8))  # same bytes, other dtype
    assert ContentCache.key(a, None) != ContentCache.key(a)  # a missing part counts
    assert ContentCache.key((a, 1)) == ContentCache.key([a.copy(), 1]) != ContentCache.key((b, 1))  # nested parts by content
    assert ContentCache.key((1, 2), 3) != ContentCache.key(1, (2, 3))  # the nesting counts
    view = np.arange(24, dtype=np.uint8).reshape(4, 6)[:, ::2]  # not contiguous: keyed by its values
    assert ContentCache.key(view) == ContentCache.key(view.copy()) != ContentCache.key(np.arange(24, dtype=np.uint8).reshape(4, 6)[:, 1::2])
    assert ContentCache.key(np.arange(3, dtype=">i4")) != ContentCache.key(np.arange(3, dtype="<i4"))  # the byte order counts


def test_empty_and_zero_dimensional_arrays_have_keys():
    """(an array's bytes are read through its buffer: a buffer with no elements, or none of its
    own dimensions, is read too)"""
    keys = {ContentCache.key(a) for a in (np.zeros((0, 3)), np.zeros((3, 0)), np.array(5), np.array(6), np.zeros((0,), bool))}
    assert len(keys) == 5


@pytest.mark.parametrize("part", [object(), {"a": 1}, {1, 2}])
def test_parts_without_a_faithful_content_key_are_refused(part):
    """A repr can carry a memory address (never hits) or be abridged (two contents, one key)."""
    with pytest.raises(TypeError, match="ContentCache.key"):
        ContentCache.key(np.zeros(3), part)


def test_use_from_several_threads_keeps_the_size_and_every_value():
    from concurrent.futures import ThreadPoolExecutor

    cache = ContentCache(16)

    def work(i):
        key = ContentCache.key(np.full(4, i % 32))
        cache.put(key, i % 32)
        got = cache.get(key)
        return got is None or got == i % 32  # evicted by another thread, or its own value

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(2000)))
    assert len(cache) == 16


def test_least_recently_used_is_dropped_first():
    cache = ContentCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    cache.clear()
    assert len(cache) == 0 and cache.get("a") is None
    with pytest.raises(ValueError, match="at least 1"):
        ContentCache(0)


def test_get_or_compute_waits_for_a_computation_in_flight_and_computes_once():
    """A key being computed on one thread (a step started ahead) is waited for by a second caller,
    which gets that value and does not compute it again; afterwards it is remembered."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    cache = ContentCache(4)
    started, release, calls = threading.Event(), threading.Event(), []

    def slow():
        calls.append("first")
        started.set()
        assert release.wait(10), "hung"
        return "value"

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(cache.get_or_compute, "k", slow)
        assert started.wait(10), "hung"
        second = pool.submit(cache.get_or_compute, "k", lambda: calls.append("second") or "other")
        pending = cache._pending["k"]
        deadline = time.monotonic() + 10
        while not pending._condition._waiters:  # (until the second caller waits on the first's result)
            assert time.monotonic() < deadline, "the second caller never waited"
            time.sleep(0.001)
        release.set()
        assert first.result(10) == second.result(10) == "value"
    assert calls == ["first"] and cache.get("k") == "value" and not cache._pending
    assert cache.get_or_compute("k", lambda: "recomputed") == "value"  # remembered


def test_get_or_compute_after_a_failed_computation_computes_anew():
    """The computing caller sees its own error; a caller that waited on it computes the value itself,
    and nothing is remembered from the failure."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    cache = ContentCache(4)
    started, release = threading.Event(), threading.Event()

    def failing():
        started.set()
        assert release.wait(10), "hung"
        raise RuntimeError("out of memory")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(cache.get_or_compute, "k", failing)
        assert started.wait(10), "hung"
        second = pool.submit(cache.get_or_compute, "k", lambda: "mine")
        release.set()
        with pytest.raises(RuntimeError, match="out of memory"):
            first.result(10)
        assert second.result(10) == "mine"
    assert cache.get("k") == "mine" and not cache._pending


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no os.fork on this platform")
def test_a_forked_child_does_not_wait_for_a_value_its_parents_thread_was_computing():
    """A child forked while another thread computes a key (or holds the lock) has no such thread:
    it computes the key itself instead of waiting forever, and the matcher's ahead thread is made
    anew in it."""
    import os
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from refine_by_align.pipelines import matching

    cache = ContentCache(4)
    started, release = threading.Event(), threading.Event()

    def held():
        started.set()
        assert release.wait(10), "hung"
        return "parent"

    matching.image_features_ahead  # (the module's at-fork handler is registered on import)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(cache.get_or_compute, "k", held)
        assert started.wait(10), "hung"
        pid = os.fork()
        if pid == 0:  # the child: only this thread
            code = 1
            try:
                ok = cache.get_or_compute("k", lambda: "child") == "child" and matching._AHEAD is None
                code = 0 if ok else 2
            finally:
                os._exit(code)
        release.set()
        assert first.result(10) == "parent"
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            raise AssertionError("the forked child waited for its parent's computation")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_get_or_wait_returns_what_is_there_or_being_computed_and_never_computes():
    """get_or_wait: the value held; a value another thread is computing, once it is computed (None
    where that failed); None where the key is neither held nor being computed."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    cache = ContentCache(4)
    assert cache.get_or_wait("absent") is None and not cache._pending
    cache.put("held", 1)
    assert cache.get_or_wait("held") == 1
    for outcome, expected in (("value", "value"), ("fail", None)):
        started, release = threading.Event(), threading.Event()

        def compute(outcome=outcome, started=started, release=release):
            started.set()
            assert release.wait(10), "hung"
            if outcome == "fail":
                raise RuntimeError("failed")
            return outcome

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(cache.get_or_compute, outcome, compute)
            assert started.wait(10), "hung"
            waiting = pool.submit(cache.get_or_wait, outcome)
            release.set()
            assert waiting.result(10) == expected
            if outcome == "fail":
                with pytest.raises(RuntimeError):
                    first.result(10)
    assert cache.get("fail") is None and not cache._pending
