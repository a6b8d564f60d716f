"""onnxcomp.workers: the process pool (order, determinism, errors, Ctrl-C, thread settings) and a real local
Ray cluster started by the test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from onnxcomp.errors import InputError, UsageError
from onnxcomp.workers import THREAD_VARS, Workers, in_worker, unit_seeds

ROOT = Path(__file__).resolve().parents[1]


# ---- units (top-level, so that workers can import them) ------------------------------------------------------------
def noisy_unit(item):
    """A pure function of (index, seed); early units take longest, so they finish last on a pool."""
    index, seed = item
    time.sleep(0.2 if index < 2 else 0.0)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((20, 20))
    return index, float(np.linalg.norm(w @ w.T)), rng.integers(0, 1 << 30, 3).tolist()


def whoami(_):
    return os.getpid(), {k: os.environ.get(k) for k in THREAD_VARS}, in_worker()


def fails_on_three(x):
    if x == 3:
        raise ValueError(f"unit value {x} is bad")
    return x * 10


def input_error_on_two(x):
    if x == 2:
        raise InputError("model.onnx: no such file")
    return x


def nested(n):
    """A unit that asks for a pool itself: it must run inline (no pools in pools)."""
    with Workers() as inner:
        return inner.size, inner.map(abs, range(-n, 0))


def items(n: int, seed: int = 7) -> list:
    return list(zip(range(n), unit_seeds(seed, n)))


# ---- the local pool ------------------------------------------------------------------------------------------------
def test_results_in_input_order_and_equal_for_any_jobs():
    work = items(8)
    expected = [noisy_unit(it) for it in work]
    for jobs in (1, 2):
        with Workers(jobs=jobs) as workers:
            assert workers.size == jobs
            assert workers.map(noisy_unit, work) == expected
            assert list(workers.imap(noisy_unit, work)) == expected
    assert [r[0] for r in expected] == list(range(8))


def test_unit_seeds_are_reproducible_and_distinct():
    assert unit_seeds(3, 5) == unit_seeds(3, 5)
    assert unit_seeds(3, 5)[:2] == unit_seeds(3, 2)  # unit i's seed does not depend on how many units
    assert len(set(unit_seeds(3, 100))) == 100
    assert unit_seeds(3, 4) != unit_seeds(4, 4)


def test_pool_runs_elsewhere_single_threaded_and_is_reused():
    before = {k: os.environ.get(k) for k in (*THREAD_VARS, "ONNXCOMP_WORKER")}
    with Workers(jobs=2) as workers:
        first = workers.map(whoami, range(6))
        pool = workers._executor
        second = workers.map(whoami, range(6))
        assert workers._executor is pool  # one pool for both maps
    pids = {pid for pid, _, _ in first + second}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    for _, env, flag in first + second:
        assert env == {k: "1" for k in THREAD_VARS} and flag
    assert {k: os.environ.get(k) for k in before} == before  # the parent's environment is left alone
    assert not in_worker()


def test_a_script_without_a_main_guard_runs_once_and_its_pool_works(tmp_path):
    """Workers must not re-run the caller's script: multiprocessing would import it again in every
    worker, and an unguarded build script would compress twice and break the pool."""
    marker = tmp_path / "ran.txt"
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(f"""
        import json
        import os
        from onnxcomp.workers import Workers
        with open({str(marker)!r}, "a") as fh:
            fh.write("top level\\n")
        with Workers(jobs=2) as workers:
            out = workers.map(abs, range(-6, 0))
            threads = workers.map(os.getenv, ["OMP_NUM_THREADS"] * 4)  # "1" only in a worker process
        print(json.dumps([out, threads, os.getenv("OMP_NUM_THREADS")]))
    """))
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out, threads, here = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == [6, 5, 4, 3, 2, 1] and threads == ["1"] * 4 and here is None  # it ran on the pool
    assert marker.read_text().splitlines() == ["top level"], "the script ran again in a worker"


def test_inline_runs_in_this_process_without_a_pool():
    with Workers(jobs=1) as workers:
        assert {pid for pid, _, _ in workers.map(whoami, range(3))} == {os.getpid()}
        assert workers._executor is None
    with Workers(jobs=2) as workers:  # a single unit is not worth a pool
        assert workers.map(whoami, [0])[0][0] == os.getpid()
        assert workers.map(whoami, []) == []
        assert workers._executor is None


def test_a_unit_inside_a_worker_runs_its_own_units_inline():
    with Workers(jobs=2) as workers:
        assert workers.map(nested, [2, 3]) == [(1, [2, 1]), (1, [3, 2, 1])]


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_exception_names_its_unit_and_keeps_its_type(jobs):
    with Workers(jobs=jobs) as workers:
        with pytest.raises(ValueError, match="unit value 3 is bad") as info:
            workers.map(fails_on_three, range(6))
        assert info.value.unit == 3
        assert "in work unit 3 of 6" in info.value.__notes__
        with pytest.raises(InputError, match="model.onnx: no such file") as info:
            workers.map(input_error_on_two, range(4))
        assert info.value.unit == 2
        assert workers.map(fails_on_three, [1, 2]) == [10, 20]  # still usable after a failure


def test_bad_arguments_are_refused():
    with pytest.raises(UsageError, match="--jobs 0"):
        Workers(jobs=0)
    with pytest.raises(UsageError, match="--jobs True"):
        Workers(jobs=True)
    for bad in ("nonsense", "host:", ":6379", "host:99999", "ray://host"):
        with pytest.raises(UsageError, match="--cluster"):
            Workers(cluster=bad)
    for jobs in (1, 2):
        with Workers(jobs=jobs) as workers:
            with pytest.raises(TypeError, match="picklable top-level function"):
                workers.map(lambda x: x, range(3))
    workers = Workers(jobs=1)
    workers.close()
    with pytest.raises(RuntimeError, match="closed"):
        workers.map(abs, [1])


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (it runs nothing any more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


SLEEPY = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    from pathlib import Path
    from onnxcomp.workers import Workers

    def sleepy(path):
        Path(path + ".tmp").write_text(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(120)
        return path

    if __name__ == "__main__":
        folder, mode = Path(sys.argv[1]), sys.argv[2]
        files = [str(folder / f"unit{i}") for i in range(4)]

        def interrupt():
            while sum(Path(f).exists() for f in files) < 2:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)

        if mode == "interrupt":
            threading.Thread(target=interrupt, daemon=True).start()
        workers = Workers(jobs=2)
        try:
            workers.map(sleepy, files)
        except KeyboardInterrupt:
            print(json.dumps([int(Path(f).read_text()) for f in files if Path(f).exists()]))
            sys.exit(0)
        sys.exit(3)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(120)
def test_ctrl_c_kills_the_workers(tmp_path):
    script = tmp_path / "sleepy.py"
    script.write_text(SLEEPY)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), "interrupt"], capture_output=True,
                          text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    pids = json.loads(proc.stdout)
    assert len(pids) == 2
    assert all(_dead(p) for p in pids)  # killed and reaped before KeyboardInterrupt reached the caller


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.timeout(120)
def test_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "sleepy.py"
    script.write_text(SLEEPY)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), "kill"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        files = [tmp_path / f"unit{i}" for i in range(2)]
        deadline = time.monotonic() + 90
        while not all(f.exists() for f in files) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        pids = [int(f.read_text()) for f in files]
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup in the parent
        proc.wait()
    deadline = time.monotonic() + 60  # the forkserver sees its parent gone, exits, and the kernel kills its workers
    while not all(_dead(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_dead(p) for p in pids)


# ---- Ray -------------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A real one-node Ray cluster on loopback: `ray start --head --block` in its own session, ended with
    SIGTERM to that process (which stops everything it started) rather than `ray stop`, which would stop
    every Ray cluster on the machine."""
    pytest.importorskip("ray")
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        ray_cli = Path(shutil.which("ray") or "ray")
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    log = open(Path(temp) / "start.log", "w")
    proc = subprocess.Popen(
        [str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--block",
         "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats",
         f"--dashboard-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # Ray's workers import the units by module name, as a cluster's nodes import onnxcomp's: this
        # module must be importable there
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                       os.environ.get("PYTHONPATH")]))))
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        if proc.poll() is not None or time.monotonic() >= deadline:
            pytest.fail("ray start did not come up: " + (Path(temp) / "start.log").read_text()[-2000:])
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this fixture started, by its id
            proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_cluster_gives_the_pools_results(ray_cluster):
    work = items(8)
    with Workers(jobs=2) as pool:
        expected = pool.map(noisy_unit, work)
    with Workers(cluster=ray_cluster) as cluster:
        assert cluster.size == 2
        assert cluster.map(noisy_unit, work) == expected
        assert list(cluster.imap(noisy_unit, work)) == expected
        assert cluster.map(abs, [-3, 4]) == [3, 4]  # a builtin works as a unit too
        pids = {pid for pid, _, _ in cluster.map(whoami, range(4))}
        assert os.getpid() not in pids
        with pytest.raises(ValueError, match="unit value 3 is bad") as info:
            cluster.map(fails_on_three, range(6))
        assert info.value.unit == 3 and "in work unit 3 of 6" in info.value.__notes__
    with Workers(jobs=1, cluster=ray_cluster) as capped:  # at most one unit in flight
        assert capped.size == 1
        assert capped.map(noisy_unit, work) == expected


def test_unreachable_cluster_is_one_line_naming_the_address():
    pytest.importorskip("ray")
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(InputError) as info:
        with Workers(cluster=address):
            pass
    message = str(info.value)
    assert message.startswith(f"--cluster {address}: cannot reach the Ray cluster") and "\n" not in message


def test_cluster_without_ray_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    with pytest.raises(InputError) as info:
        with Workers(cluster="auto"):
            pass
    assert str(info.value) == "--cluster needs the ray extra: pip install 'onnxcomp[ray]'"
    with Workers(jobs=2) as workers:
        assert workers.map(abs, [-1, -2]) == [1, 2]  # the local pool never needs ray
