"""A small memory of recent results keyed by content (the bytes of arrays and the settings), for
work a user repeats on the same inputs: a reference's matcher features, its estimated object."""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

__all__ = ["ContentCache"]


class ContentCache:
    """The last ``size`` values, least recently used dropped first; thread-safe. Keys are digests
    of the parts they are made of (:meth:`key`), so a changed input is never served a stale value.
    A cached value is shared by every caller that gets it: store read-only arrays, or copy them out."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"ContentCache size must be at least 1, got {size}")
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: dict[str, Future] = {}  # keys being computed (get_or_compute), by the thread computing them
        _ALL.add(self)

    @staticmethod
    def key(*parts: Any) -> str:
        """A digest of ``parts``: arrays by their bytes, shape and dtype; numbers, strings, bools
        and None by their repr; tuples and lists part by part. Anything else is refused
        (TypeError): a repr can be abridged ("...") or carry a memory address, and a key must
        change whenever the content does."""
        # SHA-256: OpenSSL's runs on the CPU's SHA instructions where it has them (AMD EPYC, Intel
        # since Ice Lake), twice BLAKE2b's speed here; a refine hashes about 9 MB of pictures and
        # masks (16 -> 8 ms on 2 CPU cores). An array is read through its buffer, not copied.
        h = hashlib.sha256()

        def add(part: Any) -> None:
            if isinstance(part, np.ndarray):
                h.update(b"a" + repr((part.shape, part.dtype.str)).encode())
                h.update(np.ascontiguousarray(part).reshape(-1).view(np.uint8))  # (its bytes, through the buffer)
            elif isinstance(part, (tuple, list)):
                h.update(b"(" + str(len(part)).encode())
                for p in part:
                    add(p)
            elif part is None or isinstance(part, (bool, int, float, str, np.generic)):
                h.update(b"s" + repr(part).encode())
            else:
                raise TypeError(f"ContentCache.key takes arrays, numbers, strings, None and tuples / lists of them, not {type(part).__name__}")
            h.update(b"|")

        for part in parts:
            add(part)
        return h.hexdigest()

    def _held_or_pending(self, key: str, claim: bool) -> tuple[Any | None, Future | None, bool]:
        """(the value under ``key`` or None; where it is not there, the future of another thread
        computing it, or, with ``claim``, a new one this caller computes it for; whether it is this
        caller's). Under the lock: one caller claims a key."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                return value, None, False
            pending = self._pending.get(key)
            if pending is None and claim:
                pending = self._pending[key] = Future()
                return None, pending, True
            return None, pending, False

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        """The value under ``key``, computed by ``compute()`` and remembered where it is not there.
        A key being computed by another thread is waited for, not computed twice (a step started
        ahead on a background thread, then asked for by the caller that needs it); where that
        computation failed, this caller computes it itself."""
        value, pending, mine = self._held_or_pending(key, claim=True)
        if value is not None:
            return value
        if not mine:
            try:
                return pending.result()
            except Exception:  # (the other thread's failure: computed here, as if it had not started)
                return self.get_or_compute(key, compute)
        try:
            value = compute()
        except BaseException as e:
            with self._lock:
                self._pending.pop(key, None)
            pending.set_exception(e)
            raise
        self.put(key, value)
        with self._lock:
            self._pending.pop(key, None)
        pending.set_result(value)
        return value

    def get_or_wait(self, key: str) -> Any | None:
        """The value under ``key`` where it is there, or, where another thread is computing it, that
        value once computed (None if that failed); None where it is neither."""
        value, pending, _ = self._held_or_pending(key, claim=False)
        if value is not None or pending is None:
            return value
        try:
            return pending.result()
        except Exception:
            return None

    def get(self, key: str) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


_ALL: "weakref.WeakSet[ContentCache]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child has only the forking thread: a value another thread was computing will never
    come, and a lock another thread held is never released. Each cache gets a new lock and forgets
    what was being computed (what it holds stays)."""
    for cache in list(_ALL):
        cache._lock = threading.Lock()
        cache._pending = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
