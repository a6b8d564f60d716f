"""Ctrl-C (and SIGTERM) that always stops a command, even inside a native solver.

SCIP and Gurobi install their own SIGINT handler while they solve: a Ctrl-C there only ends the
solve early (status 'userinterrupt', which the stability pass treats like a time limit), and the run
would carry on and write its output.  The command line therefore blocks SIGINT and SIGTERM in every
thread, before numpy, onnxruntime or a solver start any, and receives them in a watcher thread,
which ends the process at once with exit code 130 (143 for SIGTERM).  A file write in progress is
finished first (``writer.save_atomic`` holds ``WRITE_LOCK``), so a path holds either its old content
or a complete new file, never a half-written one, and no temporary file is left; the message says
whether anything was written.

Only the command line calls :func:`guard`; the library leaves signal handling to its caller.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

WRITE_LOCK = threading.Lock()
"""Held by every file write; the watcher takes it for good before ending the process."""

WRITTEN: list[str] = []
"""Paths written completely by this process (named in the interruption message)."""
BEFORE_EXIT: list = []
"""Callables the watcher runs before it ends the process (the command line's live display gives the
terminal back its cursor); one that fails does not stop the exit."""

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def guard() -> bool:
    """Route SIGINT/SIGTERM to a watcher thread (POSIX, main thread only); True if installed."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return False
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    threading.Thread(target=_watch, name="onnxcomp-interrupt", daemon=True).start()
    return True


def _watch() -> None:
    signum = signal.sigwait(_SIGNALS)
    WRITE_LOCK.acquire()  # never released: no write starts after this point
    what = "interrupted" if signum == signal.SIGINT else "terminated"
    done = f"wrote {', '.join(WRITTEN)} before that" if WRITTEN else "nothing written"
    for fn in list(BEFORE_EXIT):
        try:
            fn()
        except Exception:  # the exit matters more than a tidy terminal
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream must not stop the exit
            pass
    os.write(2, f"onnxcomp: {what}; {done}\n".encode())
    os._exit(128 + int(signum))
