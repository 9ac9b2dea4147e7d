"""Advisory file locks (``fcntl.flock``) that keep two processes from writing one folder at once.

Used by training (one run per run folder) and batch (one batch per output folder, shared among the
processes of a sharded run). The lock lives as long as the open file: closing it releases the lock,
and so does the end of the process, killed or not. Where ``fcntl`` is missing (Windows) no lock is
taken and the caller trusts the user.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO


def hold_lock(path: Path, shared: bool = False, wait: bool = False) -> IO | None:
    """``path`` opened for appending and locked: exclusively, or ``shared`` with other shared
    holders; without ``wait``, None where another process holds a lock that excludes this one (the
    file is closed again). Returns the open file: closing it releases the lock. Where advisory locks
    are missing the file is returned unlocked."""
    f = open(path, "a")
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: trust the user
        return f
    try:
        fcntl.flock(f.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        f.close()
        if wait:
            raise
        return None
    return f
