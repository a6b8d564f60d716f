"""Independent work units on many cores or many machines, through one interface.

Work that outgrows one core (a MILP per layer, per input piece, per leftover neuron) goes through
:class:`Workers`: a local process pool by default, a Ray cluster when one is named.  There is no scheduler
of our own: the process pool and Ray decide where a unit runs; we only submit and collect in order.

    with Workers(jobs=None) as workers:           # all cores of this machine
        results = workers.map(solve_piece, pieces)  # a list, in the order of ``pieces``

**Determinism.**  Results come back in input order whatever the number of workers, so the same inputs
give the same results with ``jobs=1``, ``jobs=8`` or a cluster, provided every unit is a *pure function
of its argument*: pass the seed in the item (:func:`unit_seeds` makes independent per-unit seeds from
one seed), never read a global random state, a clock or a shared file.  ``fn`` must be a picklable
top-level function (``functools.partial`` of one is fine), and ``onnxcomp`` must be importable where the
unit runs (every Ray node needs it installed).

**Local pool.**  ``concurrent.futures.ProcessPoolExecutor``, started on the first ``map`` with more than
one unit and reused until the ``with`` block ends.  ``jobs=None`` uses every core this process may run
on; ``jobs=1`` runs the units inline, in this process, with no pool (and a single unit always runs
inline).  Start method: ``forkserver`` where the platform has it, else ``spawn``; never plain ``fork``,
which copies whatever threads onnxruntime, OpenBLAS or a solver have started into a child where they no
longer exist (deadlocks).  Measured on the 2-core CI machine (2 workers, from a process that has numpy
and onnxruntime loaded): the first forkserver pool gives its first results after 0.3 s (the server
starts once per command and preloads numpy), every later pool after 0.03-0.05 s; ``spawn`` pays
0.75-1.0 s for every pool, since each worker imports everything anew.  The workers run one thread each (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ... set to 1, and ``ONNXCOMP_WORKER=1`` so that library code can size its own
thread pools, e.g. onnxruntime's, to 1: see :func:`in_worker`), so ``jobs`` workers use ``jobs`` cores.  A
unit that itself creates ``Workers`` runs its units inline (no pools inside pools).

**Errors.**  An exception raised by a unit is re-raised in the caller, with its own type (an
``InputError`` stays an ``InputError``), ``exc.unit`` set to the unit's index and a note "in work unit
i of n"; the worker's traceback is chained as ``__cause__``.  When several units fail, the one first in
input order is raised (the same one as with ``jobs=1``), and the units not yet started are cancelled.
Ctrl-C (``KeyboardInterrupt`` in the caller) kills the workers at once and re-raises; the workers
themselves ignore SIGINT, and on Linux they die with their parent even when it is killed outright
(``prctl(PR_SET_PDEATHSIG)``), so a unit never outlives the command.

**Ray.**  ``cluster="HOST:PORT"`` (the address ``ray start --head`` prints, port 6379 by default) or
``"auto"`` (the cluster this machine is part of) connects as a driver on a node of the cluster;
``"ray://HOST:10001"`` connects from any machine through Ray Client (needs ``ray[client]``).  Each unit
is one Ray task with one CPU; with ``jobs`` given, at most ``jobs`` units are in flight at once.  Ray is
imported only when a cluster is named; without it the error says ``pip install 'onnxcomp[ray]'``.

Running on a cluster::

    # on the head machine
    ray start --head --port=6379 --num-cpus=<cores>
    # on every other machine (same Python, same onnxcomp version)
    ray start --address=HEAD:6379 --num-cpus=<cores>
    # then, on the head (or any node)
    onnxcomp run model.onnx -p stable --domain 0:1 -o small.onnx --cluster HEAD:6379
    # or from a machine outside the cluster (head started with ray[client] installed)
    onnxcomp run model.onnx -p stable --domain 0:1 -o small.onnx --cluster ray://HEAD:10001
    # when done, on every machine
    ray stop
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from .errors import InputError, UsageError

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")
"""Environment variables that size the thread pools of OpenMP, MKL, OpenBLAS, numexpr, Accelerate, BLIS."""

WORKER_VAR = "ONNXCOMP_WORKER"
RAY_EXTRA = "--cluster needs the ray extra: pip install 'onnxcomp[ray]'"
CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a cluster's port to answer before saying it cannot be reached (Ray itself would
retry for minutes)."""

PRELOAD = ["__main__", "numpy", "onnxcomp.workers"]
"""Modules the forkserver imports once, so that every worker forked from it starts with them."""


# ---- small helpers ----------------------------------------------------------------------------------------------
def cpu_count() -> int:
    """Cores this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13
        n = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:
        n = os.cpu_count()
    return max(1, n or 1)


def in_worker() -> bool:
    """True inside a worker process of :class:`Workers` (one thread per worker is the rule there)."""
    return os.environ.get(WORKER_VAR) == "1"


def unit_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent seeds derived from ``seed`` (numpy ``SeedSequence.spawn``): give unit ``i`` the
    seed ``i``, and its result does not depend on which worker runs it or when."""
    import numpy as np

    return [int(s.generate_state(1, np.uint64)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


def _tag(exc: BaseException, index: int, total: int) -> BaseException:
    """Mark ``exc`` as raised by unit ``index``: ``exc.unit`` and a note (shown under the traceback)."""
    note = f"in work unit {index} of {total}"
    try:
        exc.unit = index
    except AttributeError:  # an exception type with __slots__
        pass
    if hasattr(exc, "add_note"):  # Python 3.11
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
    return exc


def _check_fn(fn: Callable) -> None:
    """Refuse what a worker could not receive, in every mode (so that ``jobs=1`` fails like ``jobs=8``)."""
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise TypeError(f"Workers.map needs a picklable top-level function (or a functools.partial of one); "
                        f"{fn!r} is not: {exc}") from None


@contextmanager
def _single_threaded_env(hide_main: bool = True):
    """Child processes started inside this block inherit one-thread settings (they must be in the
    environment before numpy or onnxruntime load, which is before any initializer could set them), and
    do not re-import the caller's ``__main__``.

    multiprocessing (spawn and forkserver) runs the main script again in every new worker, as
    ``__mp_main__``; in a build script without an ``if __name__ == "__main__":`` guard that re-runs the
    whole script (a second compression, writes) inside each worker and breaks the pool.  Our units are
    functions of importable modules (onnxcomp, passes, plugins), so workers need nothing from the
    script: while they start, ``__main__`` shows neither ``__file__`` nor ``__spec__``, which is what
    multiprocessing reads to find it.  ``hide_main=False`` (units defined in the script itself, which then
    needs the guard as Python requires) leaves it visible."""
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: "1" for k in THREAD_VARS})
    main = sys.modules.get("__main__")
    hidden = {k: main.__dict__.pop(k) for k in ("__file__", "__spec__")
              if hide_main and main is not None and k in main.__dict__}
    if main is not None and hidden:
        main.__spec__ = None
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if main is not None and hidden:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(hidden)


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker (SIGKILL, which works even inside a solver's C code) when the
    command dies, whether it was killed outright or ended with ``os._exit`` as the Ctrl-C watcher does.

    The worker's parent is the forkserver, so ``PR_SET_PDEATHSIG`` fires when the forkserver exits.  The
    forkserver exits when no process holds its "alive" pipe any more; every worker inherits a copy, so
    the worker closes its copy here, leaving the command as the only holder: the command dies, the
    forkserver sees EOF and exits, and the kernel kills the workers.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # no prctl: the worker exits when it next reads its closed queue
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)
    try:
        from multiprocessing import forkserver

        server = forkserver._forkserver
        fd = getattr(server, "_forkserver_alive_fd", None)
        if multiprocessing.parent_process() is not None and fd is not None:
            os.close(fd)
            server._forkserver_alive_fd = None
    except (ImportError, AttributeError, OSError):
        pass


_LIMITS = None


def _init_worker() -> None:
    """Runs first in every worker process."""
    global _LIMITS
    os.environ.update({k: "1" for k in THREAD_VARS})
    os.environ[WORKER_VAR] = "1"
    # Ctrl-C goes to the whole terminal process group; the parent handles it by killing the workers.
    # The command line blocks SIGINT/SIGTERM in every thread (onnxcomp.interrupt) and children inherit
    # that mask: unblock, so that SIGTERM ends a worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _die_with_parent()
    try:  # BLAS libraries already loaded (forkserver preloads numpy) keep their pools: shrink them
        from threadpoolctl import threadpool_limits

        _LIMITS = threadpool_limits(limits=1)
    except ImportError:
        pass


def _noop() -> None:
    return None


def _call(fn: Callable, item: Any) -> Any:
    """The one Ray task: any picklable function (a builtin too) applied to one item."""
    if not in_worker():
        os.environ.update({k: "1" for k in THREAD_VARS})
        os.environ[WORKER_VAR] = "1"
    return fn(item)


# ---- the interface -------------------------------------------------------------------------------------------------
class Workers:
    """Run independent units on a local process pool (default) or a Ray cluster; see the module docstring.

    ``jobs``: number of local worker processes (``None``: every core; ``1``: inline, no pool); with a
    cluster, the most units in flight at once (``None``: as many as there are units, Ray queues them).
    ``cluster``: ``None`` (local), ``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:PORT"``.
    """

    def __init__(self, jobs: int | None = None, cluster: str | None = None):
        if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
            raise UsageError(f"--jobs {jobs!r}: expected a whole number >= 1")
        self.cluster = _check_cluster(cluster)
        self.jobs = jobs
        self._executor: ProcessPoolExecutor | None = None
        self._hides_main = True
        self._ray = None  # the ray module once connected
        self._ray_call = None
        self._owns_ray = False
        self._closed = False

    # -- lifecycle
    def __enter__(self) -> Workers:
        if self.cluster is not None:
            self._connect()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # an error or Ctrl-C: nothing running is wanted any more
            self.terminate()

    def close(self) -> None:
        """Wait for the workers to finish what they run, then release them (pool or Ray connection)."""
        self._closed = True
        ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
        self._disconnect()

    def terminate(self) -> None:
        """Kill the local workers now (units are pure: nothing is lost but their work) and release Ray."""
        self._closed = True
        self._kill_pool()
        self._disconnect()

    @property
    def size(self) -> int:
        """How many units run at once: local workers (1 inline), or the cluster's CPUs (capped by ``jobs``)."""
        if self.cluster is not None:
            self._connect()
            cpus = max(1, int(self._ray.cluster_resources().get("CPU", 1)))
            return min(cpus, self.jobs) if self.jobs else cpus
        if in_worker():
            return 1
        return self.jobs or cpu_count()

    # -- work
    def map(self, fn: Callable[[Any], Any], items: Iterable) -> list:
        """``[fn(item) for item in items]``, computed by the workers; results in input order."""
        return list(self.imap(fn, items))

    def imap(self, fn: Callable[[Any], Any], items: Iterable) -> Iterator:
        """Like :meth:`map`, but yields each result as soon as it and all earlier ones are done.  Leaving the
        loop early cancels the units not started yet."""
        if self._closed:
            raise RuntimeError("Workers is closed")
        _check_fn(fn)
        items = list(items)
        if self.cluster is not None:
            return self._imap_ray(fn, items)
        if len(items) <= 1 or self.size == 1:
            return self._imap_inline(fn, items)
        return self._imap_pool(fn, items)

    @staticmethod
    def _imap_inline(fn, items) -> Iterator:
        for i, item in enumerate(items):
            try:
                result = fn(item)
            except Exception as exc:
                _tag(exc, i, len(items))
                raise
            yield result

    # -- local pool
    def _pool(self, hide_main: bool = True) -> ProcessPoolExecutor:
        if self._executor is not None and self._hides_main != hide_main:
            self._kill_pool()  # its workers were started seeing (or not seeing) the caller's __main__
        if self._executor is None:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            if ctx.get_start_method() == "forkserver":
                ctx.set_forkserver_preload(PRELOAD)  # takes effect when the server starts (once per process)
            with _single_threaded_env(hide_main):
                ex = ProcessPoolExecutor(max_workers=self.size, mp_context=ctx, initializer=_init_worker)
                try:  # start the forkserver (or first worker) now, while the environment is set
                    ex.submit(_noop).result()
                except BaseException:
                    ex.shutdown(wait=False, cancel_futures=True)
                    raise
            self._executor, self._hides_main = ex, hide_main
        return self._executor

    def _kill_pool(self) -> None:
        ex, self._executor = self._executor, None
        if ex is None:
            return
        procs = list((getattr(ex, "_processes", None) or {}).values())
        if hasattr(ex, "kill_workers"):  # Python 3.14
            ex.kill_workers()
        else:  # no public way before 3.14
            for p in procs:
                if p.is_alive():
                    p.kill()
        ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(timeout=10)

    def _imap_pool(self, fn, items) -> Iterator:
        n = len(items)
        futures: list[Future] = []
        try:
            hide_main = getattr(fn, "__module__", None) != "__main__"
            ex = self._pool(hide_main)
            with _single_threaded_env(hide_main):  # submit may start a worker (spawn: from this environment)
                futures = [ex.submit(fn, item) for item in items]
            for i, fut in enumerate(futures):
                try:
                    result = fut.result()
                except BrokenProcessPool as exc:
                    self._kill_pool()  # unusable now; the next map starts a new pool
                    _tag(exc, i, n)
                    raise
                except Exception as exc:
                    _tag(exc, i, n)
                    raise
                yield result
        except KeyboardInterrupt:
            self._kill_pool()
            raise
        finally:
            for fut in futures:
                fut.cancel()

    # -- Ray
    def _connect(self) -> None:
        if self._ray is not None:
            return
        try:
            import ray
        except ImportError:
            raise InputError(RAY_EXTRA) from None
        address = self.cluster
        if address != "auto":
            _check_reachable(address)
        if ray.is_initialized():  # the caller's own connection: use it, leave it open
            self._owns_ray = False
        else:
            import logging

            try:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            except ModuleNotFoundError as exc:  # ray:// without the client extra (grpc)
                raise InputError(f"--cluster {address}: Ray Client needs pip install 'ray[client]' "
                                 f"({exc.name} is missing)") from None
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise InputError(f"--cluster {address}: cannot connect to the Ray cluster: {first}") from None
            self._owns_ray = True
        self._ray = ray
        self._ray_call = ray.remote(num_cpus=1)(_call)

    def _disconnect(self) -> None:
        if self._ray is not None and self._owns_ray:
            self._ray.shutdown()
        self._ray = self._ray_call = None
        self._owns_ray = False

    def _imap_ray(self, fn, items) -> Iterator:
        self._connect()
        ray, call = self._ray, self._ray_call
        n = len(items)
        window = self.jobs or n
        pending: deque = deque()
        submitted = 0
        try:
            for i in range(n):
                while submitted < n and len(pending) < window:
                    pending.append(call.remote(fn, items[submitted]))
                    submitted += 1
                ref = pending.popleft()
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the unit raised: re-raise its exception
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, BaseException):
                        raise _tag(cause, i, n) from exc
                    _tag(exc, i, n)
                    raise
                except ray.exceptions.RayError as exc:  # Ray could not run it (worker died, node lost, ...)
                    _tag(exc, i, n)
                    raise
                yield result
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            pending.clear()
            raise
        finally:
            for ref in pending:
                ray.cancel(ref)


def _check_cluster(cluster: str | None) -> str | None:
    if cluster is None or cluster == "auto":
        return cluster
    if isinstance(cluster, str):
        host, sep, port = cluster.removeprefix("ray://").rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536:
            return cluster
    raise UsageError(f"--cluster {cluster!r}: expected auto, HOST:PORT or ray://HOST:PORT")


def _check_reachable(address: str) -> None:
    """A quick TCP connect: an address that does not answer is a one-line error now, not minutes of Ray
    retrying."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"--cluster {address}: cannot reach the Ray cluster ({reason})") from None
