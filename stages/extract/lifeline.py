"""Child processes that die with their parent, so a SIGKILLed extraction (the OOM killer, a lost dask
worker) leaves no fork server or decode worker behind holding hundreds of MB.

Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` makes the kernel kill the calling process when its parent
exits, whatever the reason. Elsewhere it does nothing, and the decode workers' own parent checks remain
(they poll the parent pid whenever a queue blocks).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent exits; exit now if ``parent`` is gone."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl: the workers' parent polling still applies
        return
    if parent is not None and os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
