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
