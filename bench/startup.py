"""Start-up of the command line: wall time of ``onnxcomp --help``, ``inspect`` and the README's main job,
against an empty interpreter start in the same run, and where the import time goes.

    python bench/startup.py [--repeat 5] [--json out.json]

Each command runs ``--repeat`` times in a fresh ``python -m onnxcomp`` process (what a user's shell
starts); the table shows the median wall time in seconds and as a ratio to ``python -c pass`` (the
baseline: the interpreter, site-packages and the editable-install hook, nothing of onnxcomp).  Then,
from one run of each command under ``python -X importtime``, the import time in all and the top-level
packages that cost the most (each module's own import time, summed by top-level package).

Last, the main job with its stderr on a pseudo-terminal, where ``run`` shows its live progress: the wall
time against the same job with stderr in a pipe (the cost of the display) and the frames it drew.

Goals of issue 20, read off the table rather than asserted: ``--help`` under 0.3 s, the main job under
1 s, on 2 cores.  Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_2x100_l1.onnx"
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)")


def cases(out: Path) -> dict[str, list[str]]:
    """The commands measured (arguments of ``python``)."""
    return {
        "python -c pass (baseline)": ["-c", "pass"],
        "onnxcomp --help": ["-m", "onnxcomp", "--help"],
        "onnxcomp passes": ["-m", "onnxcomp", "passes"],
        "onnxcomp inspect": ["-m", "onnxcomp", "inspect", str(MODEL)],
        "main job (run -p stable)": ["-m", "onnxcomp", "run", str(MODEL), "-p", "stable", "--domain", "0:1",
                                     "-o", str(out)],
    }


def wall(argv: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return elapsed


def wall_on_terminal(argv: list[str]) -> tuple[float, int]:
    """(seconds, frames of the live progress drawn) of one run whose stderr is a pseudo-terminal."""
    leader, follower = os.openpty()
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    code = proc.wait()
    elapsed = time.perf_counter() - t
    os.close(leader)
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} exited {code} on a terminal")
    return elapsed, b"".join(chunks).decode(errors="replace").count("left of --time-limit")


def import_costs(argv: list[str]) -> tuple[float, dict[str, float]]:
    """(seconds spent importing, seconds by package) of one run under ``-X importtime``: each module's own
    time (without the modules it imports) goes to its top-level package, so ``onnx`` is what onnx's
    modules cost whoever imported them; imports done inside functions while the program runs count too."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=ROOT, capture_output=True, text=True)
    by_package: dict[str, float] = defaultdict(float)
    for line in proc.stderr.splitlines():
        m = LINE.match(line)
        if m:
            by_package[m[4].split(".")[0]] += int(m[1]) / 1e6
    return sum(by_package.values()), dict(by_package)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs of each command (median shown)")
    ap.add_argument("--top", type=int, default=8, help="packages shown per command")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        commands = cases(Path(d) / "out.onnx")
        for argv in commands.values():  # warm the file cache and the bytecode
            wall(argv)
        times = {name: statistics.median(wall(argv) for _ in range(args.repeat)) for name, argv in commands.items()}
        imports = {name: import_costs(argv) for name, argv in commands.items()}
        main_job = commands["main job (run -p stable)"]
        on_terminal = [wall_on_terminal(main_job) for _ in range(args.repeat)]
        in_pipe = statistics.median(wall(main_job) for _ in range(args.repeat))
    base = times["python -c pass (baseline)"]
    print(f"start-up, median of {args.repeat} runs (python {sys.version.split()[0]}, {sys.executable})")
    print(f"{'command':<28} {'wall s':>7} {'x baseline':>10} {'imports s':>9} {'import share':>12}")
    for name, t in times.items():
        total = imports[name][0]
        print(f"{name:<28} {t:7.3f} {t / base:10.1f} {total:9.3f} {total / t:11.0%}")
    print()
    print(f"import time by package (s; top {args.top} per command; -X importtime, one run each)")
    for name, (total, packages) in imports.items():
        if name.startswith("python -c"):
            continue
        top = sorted(packages.items(), key=lambda kv: -kv[1])[:args.top]
        print(f"  {name}: " + ", ".join(f"{p} {s:.3f}" for p, s in top))
    print()
    t_term = statistics.median(t for t, _ in on_terminal)
    frames = statistics.median(f for _, f in on_terminal)
    print("live progress: the main job with stderr on a pseudo-terminal (median of the same runs)")
    print(f"  stderr a terminal {t_term:.3f} s, in a pipe {in_pipe:.3f} s (x{t_term / in_pipe:.2f}); "
          f"{frames:.0f} frames drawn (stage, time left, neurons decided / open per layer)")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_wall_s": times, "baseline_s": base,
                                               "progress": {"terminal_s": t_term, "pipe_s": in_pipe,
                                                            "frames": frames},
                                               "imports": {n: {"total_s": t, "by_package_s": p}
                                                           for n, (t, p) in imports.items()}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
