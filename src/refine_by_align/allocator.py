"""The C allocator's handling of freed memory (glibc's malloc): kept for the next allocation
instead of handed back to the system and faulted in again.

A refine allocates and frees many arrays of 1-16 MB (ALIKED's feature maps, the flow's images,
the U-Net's activations). glibc's default hands large freed blocks back to the system (``munmap``,
or trimming the heap's top), so the next array of that size is faulted in again page by page,
zero-filled by the kernel: about 17,000 page faults in one ALIKED pass at 384 x 320 px, a third of
its time on this project's 2-core CPU host (150 -> 105 ms once kept). :func:`keep_freed_memory`
sets two of glibc's ``mallopt`` settings: blocks up to ``mmap_threshold`` come from the heap, and
the heap keeps up to ``trim_threshold`` of free memory at its top. The price is that the process
holds on to its peak memory (it is reused, not returned).

The command line sets it for every command (and each benchmark child process); a program using
the library calls it itself. Other C libraries than glibc (musl, macOS, Windows) are left as they
are. ``REFINE_BY_ALIGN_MALLOC=system`` leaves glibc's defaults too, as do malloc settings the user
gave glibc already (``GLIBC_TUNABLES`` naming malloc, ``MALLOC_*_`` variables), which win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "keeps_freed_memory", "allocator_setting", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "ENV"]

#: blocks up to this many bytes come from the heap, not from their own ``mmap`` (glibc's largest
#: allowed value on 64-bit; its default starts at 128 KiB and follows the largest block freed)
MMAP_THRESHOLD = 32 << 20
#: free memory kept at the heap's top before it is handed back (glibc's default follows twice the
#: mmap threshold, so a freed 16 MB map is handed back and faulted in again on the next pass)
TRIM_THRESHOLD = 1 << 30
#: ``system``: leave the C allocator as it is
ENV = "REFINE_BY_ALIGN_MALLOC"

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_state: str | None = None  # what keep_freed_memory did in this process (None: not called)
_kept = False  # whether it made the setting


def _user_setting() -> str | None:
    """The malloc setting the environment already gives glibc, if any."""
    if os.environ.get(ENV, "").strip().lower() == "system":
        return f"{ENV}=system"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    named = [k for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_") if k in os.environ]
    return named[0] if named else None


def _glibc():
    """glibc's shared library, or None on another C library."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version  # (glibc only: musl has no such function)
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Have glibc's malloc keep freed memory for reuse (see the module's docstring). Returns True
    where the setting was made; False where the C library is not glibc, where the environment
    names a malloc setting of its own (or ``REFINE_BY_ALIGN_MALLOC=system``), or where glibc
    refused a value. Safe to call more than once."""
    global _state, _kept
    if not 0 < mmap_threshold < 2**31 or not 0 < trim_threshold < 2**31:
        raise ValueError(f"thresholds must be in 1..2^31-1 bytes, got {mmap_threshold}, {trim_threshold}")
    user = _user_setting()
    if user is not None:
        _state = f"left to the environment ({user})"
        return False
    libc = _glibc()
    if libc is None:
        _state = "not glibc: left as it is"
        return False
    # the mmap threshold first, the trim threshold only where it was taken: setting either one
    # stops glibc following freed blocks' sizes, and the trim threshold alone would leave every
    # block over 128 KiB to its own mmap (an ALIKED pass 150 -> 240 ms)
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    _kept = ok
    _state = f"glibc malloc keeps freed memory (mmap threshold {mmap_threshold >> 20} MiB, trim threshold {trim_threshold >> 20} MiB)" if ok else "glibc refused the setting"
    return ok


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` made its setting in this process."""
    return _kept


def allocator_setting() -> str:
    """One line saying what :func:`keep_freed_memory` did in this process (for benchmark records)."""
    return _state or "C allocator's defaults (keep_freed_memory not called)"
