"""The worker's lower CPU priority, made to hold on Linux.

`os.nice` changes the calling thread only: threads a process started before the call (an import's thread pool)
stay at the old priority. And where the kernel groups processes by session (autogroup, the default on many
desktops and servers), nice orders threads within a session only, not a worker against an api started in
another. So: every thread of the process gets the value (threads started later inherit it from their starter),
and a worker that leads its own session gives that session the same nice, which orders it against the others.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_TASKS = Path("/proc/self/task")
_AUTOGROUP = Path("/proc/self/autogroup")


def lower_priority(by: int) -> int:
    """Lower this process's priority by `by` nice steps from the calling thread's (at most to 19), on every thread
    it has; returns the nice value it now runs at."""
    nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + by)
    if not _TASKS.is_dir():  # not Linux: the process-wide call is all there is
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        return nice
    for task in _TASKS.iterdir():
        try:
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)  # on Linux, a thread id names one thread
        except ProcessLookupError:
            pass  # the thread ended meanwhile
    if os.getsid(0) == os.getpid() and _AUTOGROUP.exists():
        try:
            _AUTOGROUP.write_text(str(nice))
        except OSError as exc:  # the kernel may not let this user change it; threads' nice still holds within
            log.warning("could not lower the worker's session priority (%s): it shares CPU with other sessions "
                        "as an equal", exc)
    return nice

