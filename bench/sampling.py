"""Sampling benchmark (issue 2): throughput of the ``sample`` pass against plain onnxruntime inference.

For every model and batch size the same float32 inputs (uniform points of the model's domain) go through

* ``plain``:  ``onnxcomp.runtime.Runner`` on the original ONNX file, batches of B, outputs discarded;
* ``sample``: ``onnxcomp.sampling.collect`` with those rows as ``data``, the domain as ``box`` (so the
  in-domain witness test runs, as in the pipeline) and ``sampling.BATCH = B``;

interleaved, ``--repeats`` times each.  Throughput is the batch size over the median per-batch time of all
batches of all repeats (``collect``'s per-batch times come from its progress hook, so its real loop is
timed); the ratio of the best end-to-end times (session creation included) and of CPU seconds (all
threads) are printed beside it, with the load average, because the machine may be shared.
Target: sample >= 50 % of plain.

``--profile`` times the phases of ``collect``'s loop one at a time (same functions).

Usage: python bench/sampling.py [--quick] [--rows N] [--batches 256,4096,16384] [--repeats 3] [--profile]
                                [--device auto|cpu|cuda] [--out bench/out]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT, SPECS, print_table, pyplot, write_csv  # noqa: E402

import onnxcomp.sampling as sample_mod  # noqa: E402
from onnxcomp.ir import Box, Network  # noqa: E402
from onnxcomp.pipeline import Progress  # noqa: E402
from onnxcomp.runtime import Runner  # noqa: E402
from onnxcomp.sampling import _Accumulator, _rows_in_box, collect, instrumented_runner  # noqa: E402
from onnxcomp.stability.state import epsilons, witness_floor  # noqa: E402

MODELS = [("digits_2x100", "0:1"), ("mnist_2x200_l1", "0:1"), ("mnist_3x100_l1", "0:1"),
          ("mnistfc_256x2", "0:1"), ("acasxu_1_1", "prop_1")]
QUICK_MODELS = [("digits_2x100", "0:1"), ("mnist_2x200_l1", "0:1"), ("acasxu_1_1", "prop_1")]
TARGET = 0.5


class Clock(Progress):
    """A progress hook that notes the time of every ``advance``: ``collect`` calls it once per batch, so
    the differences are the per-batch times of its real loop (inputs, domain test, run, statistics)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def start(self, description: str, total: int) -> None:
        self.stamps = [time.perf_counter()]

    def advance(self, n: int) -> None:
        self.stamps.append(time.perf_counter())

    @property
    def batch_seconds(self) -> list[float]:
        return list(np.diff(self.stamps))


def time_plain(model: onnx.ModelProto, x: np.ndarray, batch: int, device: str) -> tuple[float, list]:
    t0 = time.perf_counter()
    runner = Runner.create(model, device)
    clock = Clock()
    clock.start("", x.shape[0])
    for _ in runner.iter_batches(x, batch):
        clock.advance(batch)
    return time.perf_counter() - t0, clock.batch_seconds


def time_sample(net: Network, box: Box, x: np.ndarray, batch: int, device: str) -> tuple[float, list]:
    clock = Clock()
    t0 = time.perf_counter()
    sample_mod.BATCH = batch
    collect(net, box, x, device=device, progress=clock, use_box_samples=False)
    return time.perf_counter() - t0, clock.batch_seconds


def measure(name: str, domain: str, batches: list, rows: int, repeats: int, device: str) -> list[dict]:
    """Throughput of plain inference and of ``collect`` on the same rows (median per-batch time over
    every batch of every repeat, robust to a shared machine stealing a core now and then)."""
    spec = SPECS[name]
    model, net = spec.load()
    box = spec.box(domain, net)
    x = box.sample(rows, np.random.default_rng(0)).astype(np.float32)
    out = []
    default_batch = sample_mod.BATCH
    try:
        for batch in batches:
            n = min(rows, max(batch, rows // batch * batch))
            xb = x[:n]
            total = {"plain": np.inf, "sample": np.inf}
            cpu = {"plain": np.inf, "sample": np.inf}
            per_batch = {"plain": [], "sample": []}
            for _ in range(repeats):
                for name_, fn in (("plain", lambda: time_plain(model, xb, batch, device)),
                                  ("sample", lambda: time_sample(net, box, xb, batch, device))):
                    c0 = time.process_time()
                    t, b = fn()
                    cpu[name_] = min(cpu[name_], time.process_time() - c0)
                    total[name_] = min(total[name_], t)
                    per_batch[name_] += b
            med = {v: float(np.median(per_batch[v])) for v in per_batch}
            row = {"model": name, "domain": domain, "batch": batch, "rows": n,
                   "plain_per_s": batch / med["plain"], "sample_per_s": batch / med["sample"],
                   "sample_ratio": med["plain"] / med["sample"],
                   "sample_ratio_end_to_end": total["plain"] / total["sample"],
                   "sample_cpu_ratio": cpu["plain"] / cpu["sample"],
                   "load_avg": round(os.getloadavg()[0], 1)}
            row["target_met"] = row["sample_ratio"] >= TARGET
            out.append(row)
            print_table([row], ["model", "batch", "plain_per_s", "sample_per_s", "sample_ratio",
                                "sample_ratio_end_to_end", "sample_cpu_ratio", "load_avg"])
    finally:
        sample_mod.BATCH = default_batch
    return out


def profile(name: str, domain: str, rows: int, batch: int, device: str) -> list[dict]:
    """Where the time of ``collect``'s loop goes, one phase at a time, with the same functions."""
    spec = SPECS[name]
    model, net = spec.load()
    box = spec.box(domain, net)
    x = box.sample(rows, np.random.default_rng(0)).astype(np.float32)
    phases = ["plain ORT run (original model)", "in-domain test", "ORT run of the instrumented model",
              "statistics (accumulator)"]
    t = dict.fromkeys(phases, 0.0)
    plain = Runner.create(model, device)
    runner = instrumented_runner(net, device)
    acc = _Accumulator(net, witness_floor(epsilons(net, box.lo, box.hi), float32=True), False)
    for start in range(0, x.shape[0], batch):
        xb = x[start:start + batch]
        t0 = time.perf_counter()
        in_box = _rows_in_box(box, xb)
        t1 = time.perf_counter()
        (y,) = next(runner.iter_batches(xb, batch))
        t2 = time.perf_counter()
        acc.update(y, in_box)
        t3 = time.perf_counter()
        for _ in plain.iter_batches(xb, batch):
            pass
        t4 = time.perf_counter()
        t[phases[1]] += t1 - t0
        t[phases[2]] += t2 - t1
        t[phases[3]] += t3 - t2
        t[phases[0]] += t4 - t3
    sampled = sum(t[p] for p in phases[1:])
    return [{"model": name, "batch": batch, "phase": p, "ms": 1e3 * v,
             "share_of_collect": (v / sampled) if p != phases[0] else ""} for p, v in t.items()]


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    batches = sorted({r["batch"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(batches)
    for j, b in enumerate(batches):
        vals = [next((r["sample_ratio"] for r in rows if r["model"] == m and r["batch"] == b), np.nan) for m in models]
        ax.bar(np.arange(len(models)) + (j - (len(batches) - 1) / 2) * width, vals, width, label=f"batch {b}")
    ax.axhline(TARGET, color="k", ls="--", lw=1, label="target 50 %")
    ax.set_xticks(np.arange(len(models)))
    ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("sample throughput / plain onnxruntime inference")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("sample pass throughput relative to plain inference (same inputs, same batch)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three models, fewer rows")
    ap.add_argument("--rows", type=int, default=None, help="input rows per measurement (default 65536, quick 16384)")
    ap.add_argument("--batches", default="256,4096,16384")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also time the phases of collect")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rows = args.rows or (16384 if args.quick else 65536)
    batches = [int(b) for b in args.batches.split(",")]
    models = QUICK_MODELS if args.quick else MODELS
    results = []
    for name, domain in models:
        results += measure(name, domain, batches, rows, args.repeats, args.device)
    cols = ["model", "domain", "batch", "rows", "plain_per_s", "sample_per_s", "sample_ratio",
            "sample_ratio_end_to_end", "sample_cpu_ratio", "load_avg", "target_met"]
    print_table(results, cols, f"samples/s, sample pass vs plain onnxruntime inference (target ratio >= {TARGET})")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "sampling.csv", results, cols)
    plot(results, args.out / "sampling.png")
    if args.profile:
        prof = []
        for name, domain in models:
            prof += profile(name, domain, rows, 4096, args.device)
        pcols = ["model", "batch", "phase", "ms", "share_of_collect"]
        print_table(prof, pcols, "where collect's time goes (batch 4096)")
        write_csv(args.out / "sampling_profile.csv", prof, pcols)
    met = sum(r["target_met"] for r in results)
    print(f"\ntarget (sample >= {TARGET:.0%} of plain inference) met in {met} of {len(results)} cases; "
          f"median ratio {np.median([r['sample_ratio'] for r in results]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
