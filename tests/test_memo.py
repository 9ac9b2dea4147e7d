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
