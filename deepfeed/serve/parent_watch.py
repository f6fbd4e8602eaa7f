"""Serving workers end when the process that started them dies.

`deepfeed serve --workers N` runs uvicorn's supervisor, which starts N worker processes
that share its listening socket. When the supervisor is killed outright (SIGKILL, the
OOM killer) it cannot stop them, and they would keep the port, so the next
`deepfeed serve` fails with "address already in use" while orphans answer requests.
Each worker therefore asks the kernel for SIGTERM when its parent dies (Linux
prctl(PR_SET_PDEATHSIG)), and also watches its parent's pid from a thread, which covers
other systems and the moment between its start and the prctl call. SIGTERM is uvicorn's
graceful shutdown; a worker still alive after `grace_seconds` exits hard.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
GRACE_SECONDS = 5.0


def _set_parent_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, poll_seconds: float, grace_seconds: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_seconds)
    log.warning("serving worker %d: its supervisor (pid %d) is gone; shutting down", os.getpid(), parent)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_seconds)
    os._exit(1)  # graceful shutdown did not finish: the port must be freed anyway


def exit_with_parent(poll_seconds: float = 0.5, grace_seconds: float = GRACE_SECONDS) -> bool:
    """In a worker process started by multiprocessing (uvicorn's supervisor): end this
    process when its parent dies. Returns False (and does nothing) in a process that was
    not started that way, e.g. `deepfeed serve --workers 1`, which is the server itself."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return False
    _set_parent_death_signal(signal.SIGTERM)
    threading.Thread(
        target=_watch, args=(parent.pid, poll_seconds, grace_seconds), name="parent-watch", daemon=True
    ).start()
    return True
