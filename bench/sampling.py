"""Sampling benchmark (issue 2): throughput of the ``sample`` pass against plain onnxruntime inference.

For every model and batch size the same float32 inputs (uniform points of the model's domain) go through

* ``plain``:  ``onnxcomp.runtime.Runner`` on the original ONNX file, batches of B, outputs discarded;
* ``sample``: ``passes.analysis.sample.collect`` with those rows as ``ctx.data``, the domain as ``ctx.box``
  (so the in-domain witness test runs, as in the pipeline) and ``sample.BATCH = B``;

interleaved, ``--repeats`` times each.  Throughput is the batch size over the median per-batch time of
all batches of all repeats (``collect``'s per-batch times come from its progress hook, so its real loop is
timed); the ratio of the best end-to-end times (onnxruntime session creation included) is reported
beside it, and so is the ratio of CPU seconds (all threads, onnxruntime's thread spinning off on both
sides): the compute the statistics add, independent of other jobs on a shared machine.  The load
average is printed with every row.  Target: sample >= 50 % of plain.

Faster variants are measured beside it; the prototypes are checked against it (same counts, min and max
exactly, sums to 1e-9 relative), so their speed is that of a correct implementation:

* ``sample-nospin``: the unchanged ``collect`` with onnxruntime's intra-op thread spinning off (see
  ``no_spinning``); the prototypes below also run without spinning;
* ``proto-np``:  same instrumented model, the domain test skipped when the batch's column minima and
  maxima lie in the box (``rows_in_box``), statistics kept in the model's dtype (min/max/comparisons are
  exact in float32, and so is the in-domain test against each neuron's numerical zero once that is
  rounded down to float32, see ``thresholds``; only the sum is accumulated in float64), int32 partial
  counts, no float64 copy of the inputs, no concatenation of a single batch;
* ``proto-wide``: as ``proto-np``, but the instrumented graph ends in one ``Concat`` of all pre-activations
  (its only output, so the network output is not copied out), the statistics are reduced over that one
  (N, sum of widths) array (wide rows vectorise better than 6 arrays of width 50), and the active counts
  are summed in uint8 blocks of 255 rows instead of a widening cast of every element.

Rejected (measured, not kept): computing the statistics inside onnxruntime with ReduceMin/ReduceMax/
ReduceSum(Cast(Greater)) nodes; onnxruntime's reductions over the batch axis are several times slower
than numpy's (ReduceMin over axis 0 of a 4096x100 float32 tensor: 0.66 ms vs 0.11 ms in numpy).

``--profile`` times the phases of the current ``collect`` loop (its own functions, called one at a time).

Usage: python bench/sampling.py [--quick] [--rows N] [--batches 256,4096,16384] [--repeats 3] [--profile]
                                [--device auto|cpu|cuda] [--out bench/out]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT, SPECS, print_table, pyplot, write_csv  # noqa: E402

import passes.analysis.sample as sample_mod  # noqa: E402
from onnxcomp.ir import Box, Network  # noqa: E402
from onnxcomp.onnxio import real_inputs  # noqa: E402
from onnxcomp.pipeline import Context, Progress  # noqa: E402
from onnxcomp import runtime  # noqa: E402
from onnxcomp.runtime import Runner  # noqa: E402
from onnxcomp.verify import sample_inputs  # noqa: E402
from onnxcomp.writer import PRE_PREFIX, to_model  # noqa: E402
from passes.analysis.sample import ActivationStats, LayerStats, collect, instrumented_runner  # noqa: E402
from passes.analysis.stability_state import epsilons  # noqa: E402

MODELS = [("digits_2x100", "0:1"), ("mnist_2x200_l1", "0:1"), ("mnist_3x100_l1", "0:1"),
          ("mnistfc_256x2", "0:1"), ("acasxu_1_1", "prop_1")]
QUICK_MODELS = [("digits_2x100", "0:1"), ("mnist_2x200_l1", "0:1"), ("acasxu_1_1", "prop_1")]
TARGET = 0.5
VARIANTS = ("sample", "sample-nospin", "proto-np", "proto-wide")


@contextlib.contextmanager
def no_spinning():
    """Sessions made inside have onnxruntime's intra-op thread spinning off.  After a run the pool's
    threads otherwise spin for a while, taking the second core from the numpy statistics that follow
    every run of the instrumented model (bench-only stand-in for a session option in onnxcomp.runtime)."""
    plain_options = runtime._quiet_options

    def options():
        so = plain_options()
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    runtime._quiet_options = options
    try:
        yield
    finally:
        runtime._quiet_options = plain_options


# ---- prototype 1: numpy statistics without the float64 detour ---------------------------------------
def thresholds(net: Network, box: Box | None, dtype) -> list[np.ndarray]:
    """Each layer's numerical zero (``stability_state.epsilons``; in-domain witnesses need ``y > eps`` /
    ``y < -eps``) in the dtype onnxruntime returns, rounded down: for a float32 ``y``, ``y > e`` holds
    exactly when ``y > f`` with ``f`` the largest float32 <= ``e``, so the comparison needs no upcast."""
    eps = epsilons(net, box.lo, box.hi) if box is not None else [np.zeros(l.n_out) for l in net.layers]
    out = []
    for e in eps:
        f = np.asarray(e, dtype=dtype)
        out.append(np.where(f > e, np.nextafter(f, dtype(-np.inf)), f).astype(dtype))
    return out


def _update_native(st: LayerStats, y: np.ndarray, in_box: np.ndarray | None, thr: np.ndarray) -> None:
    """``LayerStats.update`` without the covariance, computed in the dtype onnxruntime returned."""
    n = y.shape[0]
    st.count += n
    np.minimum(st.min, y.min(axis=0), out=st.min)
    np.maximum(st.max, y.max(axis=0), out=st.max)
    # int32 partial counts are exact (a batch has far fewer than 2**31 rows) and reduce ~2x faster
    st.n_active += np.add.reduce(y > 0, axis=0, dtype=np.int32)
    st.n_inactive += np.add.reduce(y < 0, axis=0, dtype=np.int32)
    st.sum += y.sum(axis=0, dtype=np.float64)
    if in_box is not None and not in_box.all():
        y = y[in_box]
    st.dom_count += y.shape[0]
    st.dom_active += np.add.reduce(y > thr, axis=0, dtype=np.int32)
    st.dom_inactive += np.add.reduce(y < -thr, axis=0, dtype=np.int32)


def rows_in_box(box: Box | None, x: np.ndarray) -> np.ndarray | None:
    """Which rows lie in the box; ``None`` when all do.  Fast path: when the column minima and maxima
    of the batch lie in the box, so does every row (two reductions in the data's own dtype instead of a
    float64 copy and two full comparisons)."""
    if box is None:
        return None
    if x.shape[0] and np.all(x.min(axis=0) >= box.lo) and np.all(x.max(axis=0) <= box.hi):
        return None
    return box.contains(x)


def collect_native(net: Network, box: Box | None, x: np.ndarray, batch: int, device: str,
                   clock: Progress) -> ActivationStats:
    with no_spinning():
        runner = instrumented_runner(net, device)
    thr = thresholds(net, box, runner.np_dtype)
    layers = [LayerStats(layer.n_out) for layer in net.layers]
    stats = ActivationStats(layers, [l.layer_id for l in net.layers], [list(l.neuron_ids) for l in net.layers])
    clock.start("", x.shape[0])
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        in_box = rows_in_box(box, xb)
        for pres in runner.iter_batches(xb, batch):  # one batch: no concatenation
            for st, y, t in zip(layers, pres, thr):
                _update_native(st, y, in_box, t)
        stats.samples += xb.shape[0]
        stats.in_domain += int(in_box.sum()) if in_box is not None else xb.shape[0]
        clock.advance(xb.shape[0])
    return stats


# ---- prototype 2: one wide pre-activation output, uint8 block counts ------------------------------------
PRE_ALL = "onnxcomp/pre_all"


def concat_runner(net: Network, device: str) -> Runner:
    """A runner over the instrumented model whose only output is every pre-activation side by side,
    (N, sum of widths): one array to reduce instead of one per layer, and no network output copied."""
    model = to_model(net, expose_preactivations=True)
    pres = [f"{PRE_PREFIX}{k}" for k in range(len(net.layers))]
    g = model.graph
    batch = next(o for o in g.output if o.name == pres[0]).type.tensor_type.shape.dim[0]
    total = sum(layer.n_out for layer in net.layers)
    elem = real_inputs(model)[0].type.tensor_type.elem_type
    out = helper.make_tensor_value_info(PRE_ALL, elem, [batch.dim_param or batch.dim_value, total])
    graph = helper.make_graph(list(g.node) + [helper.make_node("Concat", pres, [PRE_ALL], axis=1)], g.name,
                              list(g.input), [out], initializer=list(g.initializer),
                              sparse_initializer=list(g.sparse_initializer), value_info=list(g.value_info))
    wide = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    onnx.checker.check_model(wide)
    return Runner.create(wide, device, [PRE_ALL])


def count_positive(mask: np.ndarray) -> np.ndarray:
    """Column sums of a boolean (N, w) array: blocks of 255 rows summed in uint8 (cannot overflow, and
    needs no widening cast per element), then the block sums in int64."""
    n, w = mask.shape
    u = mask.view(np.uint8)
    full = (n // 255) * 255
    out = np.zeros(w, np.int64)
    if full:
        out += np.add.reduce(u[:full].reshape(-1, 255, w), axis=1, dtype=np.uint8).sum(axis=0, dtype=np.int64)
    if full < n:
        out += np.add.reduce(u[full:], axis=0, dtype=np.int64)
    return out


def collect_wide(net: Network, box: Box | None, x: np.ndarray, batch: int, device: str,
                 clock: Progress) -> ActivationStats:
    with no_spinning():
        runner = concat_runner(net, device)
    thr = np.concatenate(thresholds(net, box, runner.np_dtype))
    layers = [LayerStats(layer.n_out) for layer in net.layers]
    stats = ActivationStats(layers, [l.layer_id for l in net.layers], [list(l.neuron_ids) for l in net.layers])
    edges = np.concatenate([[0], np.cumsum([layer.n_out for layer in net.layers])])
    total = int(edges[-1])
    mn, mx = np.full(total, np.inf), np.full(total, -np.inf)
    na, ni, da, di = (np.zeros(total, np.int64) for _ in range(4))
    s = np.zeros(total)
    dom = 0
    clock.start("", x.shape[0])
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        in_box = rows_in_box(box, xb)
        for (y,) in runner.iter_batches(xb, batch):
            np.minimum(mn, y.min(axis=0), out=mn)
            np.maximum(mx, y.max(axis=0), out=mx)
            na += count_positive(y > 0)
            ni += count_positive(y < 0)
            s += y.sum(axis=0, dtype=np.float64)
            if in_box is not None and not in_box.all():
                y = y[in_box]
            da += count_positive(y > thr)
            di += count_positive(y < -thr)
            dom += y.shape[0]
        stats.samples += xb.shape[0]
        clock.advance(xb.shape[0])
    stats.in_domain = dom
    for k, st in enumerate(layers):
        sl = slice(edges[k], edges[k + 1])
        st.count, st.dom_count = stats.samples, dom
        st.min, st.max, st.sum = mn[sl], mx[sl], s[sl]
        st.n_active, st.n_inactive, st.dom_active, st.dom_inactive = na[sl], ni[sl], da[sl], di[sl]
    return stats


def same_stats(a: ActivationStats, b: ActivationStats) -> str:
    """'' when ``b`` equals ``a`` (counts, min, max exactly; sums to 1e-9 relative), else what differs."""
    if (a.samples, a.in_domain) != (b.samples, b.in_domain):
        return f"samples {a.samples}/{a.in_domain} vs {b.samples}/{b.in_domain}"
    for k, (sa, sb) in enumerate(zip(a.layers, b.layers)):
        for f in ("count", "dom_count", "min", "max", "n_active", "n_inactive", "dom_active", "dom_inactive"):
            if not np.array_equal(getattr(sa, f), getattr(sb, f)):
                return f"layer {k}: {f} differs"
        if not np.allclose(sa.sum, sb.sum, rtol=1e-9, atol=1e-9 * max(1.0, float(np.abs(sa.sum).max()))):
            return f"layer {k}: sum differs by {np.abs(sa.sum - sb.sum).max():.3g}"
    return ""


# ---- measurement -----------------------------------------------------------------------------------
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


def run_variant(variant: str, net: Network, box: Box, x: np.ndarray, batch: int, device: str):
    """(seconds end to end, per-batch seconds, ActivationStats) of one way of sampling ``x``."""
    clock = Clock()
    t0 = time.perf_counter()
    if variant in ("sample", "sample-nospin"):
        sample_mod.BATCH = batch
        ctx = Context(box=box, data=x, device=device, progress=clock)
        with no_spinning() if variant == "sample-nospin" else contextlib.nullcontext():
            stats = collect(net, ctx, use_box_samples=False)
    elif variant == "proto-np":
        stats = collect_native(net, box, x, batch, device, clock)
    else:
        stats = collect_wide(net, box, x, batch, device, clock)
    return time.perf_counter() - t0, clock.batch_seconds, stats


def measure(name: str, domain: str, batches: list, rows: int, repeats: int, device: str) -> list[dict]:
    """Throughput of plain inference and of each sampling variant on the same rows.

    The machine is shared (other jobs steal a core, and onnxruntime's two-thread pool then stalls a run
    for a scheduler slice, ~20 ms): the headline number is therefore the *median per-batch* time over
    every batch of every repeat (steady state, robust to those stalls); the best end-to-end time
    (session creation included) is reported beside it."""
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
            total = {v: np.inf for v in ("plain",) + VARIANTS}
            cpu = {v: np.inf for v in ("plain-nospin",) + VARIANTS}
            per_batch = {v: [] for v in ("plain",) + VARIANTS}
            for _ in range(repeats):
                t, b = time_plain(model, xb, batch, device)
                total["plain"] = min(total["plain"], t)
                per_batch["plain"] += b
                c0 = time.process_time()
                with no_spinning():
                    time_plain(model, xb, batch, device)
                cpu["plain-nospin"] = min(cpu["plain-nospin"], time.process_time() - c0)
                ref = None
                for v in VARIANTS:
                    c0 = time.process_time()
                    t, b, stats = run_variant(v, net, box, xb, batch, device)
                    cpu[v] = min(cpu[v], time.process_time() - c0)
                    total[v] = min(total[v], t)
                    per_batch[v] += b
                    if v == "sample":
                        ref = stats
                    elif diff := same_stats(ref, stats):
                        raise SystemExit(f"FAILED: prototype {v} disagrees with collect on {name}: {diff}")
            med = {v: float(np.median(per_batch[v])) for v in per_batch}
            row = {"model": name, "domain": domain, "batch": batch, "rows": n, "plain_per_s": batch / med["plain"]}
            for v in VARIANTS:
                row[f"{v}_per_s"] = batch / med[v]
                row[f"{v}_ratio"] = med["plain"] / med[v]
            row["sample_ratio_end_to_end"] = total["plain"] / total["sample"]
            # CPU seconds (all threads), spinning off everywhere so that only useful work is counted:
            # what the statistics cost in compute, whatever the other jobs on the machine do
            row["sample_cpu_ratio"] = cpu["plain-nospin"] / cpu["sample-nospin"]
            row["proto-wide_cpu_ratio"] = cpu["plain-nospin"] / cpu["proto-wide"]
            row["load_avg"] = round(os.getloadavg()[0], 1)
            row["target_met"] = row["sample_ratio"] >= TARGET
            out.append(row)
            print_table([row], ["model", "batch", "plain_per_s", "sample_per_s", "sample_ratio",
                                "sample-nospin_ratio", "proto-np_ratio", "proto-wide_ratio", "sample_ratio_end_to_end",
                                "sample_cpu_ratio", "proto-wide_cpu_ratio", "load_avg"])
    finally:
        sample_mod.BATCH = default_batch
    return out


def profile(name: str, domain: str, rows: int, batch: int, device: str) -> list[dict]:
    """Where the time of ``collect`` goes: its loop, one phase at a time, with the same functions."""
    spec = SPECS[name]
    model, net = spec.load()
    box = spec.box(domain, net)
    x = box.sample(rows, np.random.default_rng(0)).astype(np.float32)
    t = dict.fromkeys(["plain ORT run (original model)", "input batches to float64 (sample_inputs)",
                       "box.contains (in-domain test)", "ORT run of the instrumented model",
                       "Runner overhead (cast to float32, reshape, concatenate)",
                       "float64 conversion of the pre-activations", "statistics (LayerStats.update)",
                       "[domain mode only] uniform samples (box.sample)"], 0.0)
    keys = list(t)
    plain = Runner.create(model, device)
    runner = instrumented_runner(net, device)
    layers = [LayerStats(layer.n_out) for layer in net.layers]
    eps = epsilons(net, box.lo, box.hi)
    it = sample_inputs(None, x, 0, 0, 0, batch)
    while True:
        t0 = time.perf_counter()
        xb = next(it, None)
        t1 = time.perf_counter()
        if xb is None:
            break
        t[keys[1]] += t1 - t0
        in_box = box.contains(xb)
        t2 = time.perf_counter()
        t[keys[2]] += t2 - t1
        feed32 = xb.astype(np.float32).reshape((xb.shape[0],) + runner.sample_shape)
        t3 = time.perf_counter()
        runner.sess.run(runner.output_names, {runner.input_name: feed32})
        t4 = time.perf_counter()
        t[keys[3]] += t4 - t3
        pres = runner.run(xb, batch)
        t5 = time.perf_counter()
        t[keys[4]] += max((t5 - t4) - (t4 - t3), 0.0)
        pres64 = [np.asarray(y, dtype=np.float64) for y in pres]
        t6 = time.perf_counter()
        t[keys[5]] += t6 - t5
        for k, (st, y) in enumerate(zip(layers, pres64)):
            st.update(y, in_box, net.layers[k].is_relu, eps[k])
        t7 = time.perf_counter()
        t[keys[6]] += t7 - t6
        pfeed = xb.astype(plain.np_dtype).reshape((xb.shape[0],) + plain.sample_shape)
        if plain.batchable:
            t8 = time.perf_counter()
            plain.sess.run(plain.output_names, {plain.input_name: pfeed})
            t[keys[0]] += time.perf_counter() - t8
        else:
            t8 = time.perf_counter()
            for _ in plain.iter_batches(xb, batch):
                pass
            t[keys[0]] += time.perf_counter() - t8
    t0 = time.perf_counter()
    box.sample(rows, np.random.default_rng(1))
    t[keys[7]] = time.perf_counter() - t0
    total = sum(t[k] for k in keys[1:7])
    return [{"model": name, "batch": batch, "phase": k, "ms": 1e3 * v,
             "share_of_collect": (v / total) if 0 < keys.index(k) < 7 else ""} for k, v in t.items()]


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    batches = sorted({r["batch"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 4.2), sharey=True, squeeze=False)
    width = 0.8 / len(VARIANTS)
    for ax, b in zip(axes[0], batches):
        for j, v in enumerate(VARIANTS):
            vals = [next((r[f"{v}_ratio"] for r in rows if r["model"] == m and r["batch"] == b), np.nan) for m in models]
            ax.bar(np.arange(len(models)) + (j - (len(VARIANTS) - 1) / 2) * width, vals, width, label=v)
        ax.axhline(TARGET, color="k", ls="--", lw=1, label="target 50 %")
        ax.set_xticks(np.arange(len(models)))
        ax.set_xticklabels(models, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"batch {b}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("throughput / plain onnxruntime inference")
    axes[0][-1].legend(fontsize=8)
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
    cols = ["model", "domain", "batch", "rows", "plain_per_s", "sample_per_s", "sample_ratio", "sample-nospin_per_s",
            "sample-nospin_ratio", "proto-np_per_s",
            "proto-np_ratio", "proto-wide_per_s", "proto-wide_ratio", "sample_ratio_end_to_end", "sample_cpu_ratio",
            "proto-wide_cpu_ratio", "load_avg", "target_met"]
    print_table(results, cols, f"samples/s, sample pass vs plain onnxruntime inference (target ratio >= {TARGET})")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "sampling.csv", results, cols)
    plot(results, args.out / "sampling.png")
    if args.profile:
        prof = []
        for name, domain in models:
            prof += profile(name, domain, rows, 4096, args.device)
        pcols = ["model", "batch", "phase", "ms", "share_of_collect"]
        print_table(prof, pcols, f"where collect's time goes ({rows} rows, batch 4096)")
        write_csv(args.out / "sampling_profile.csv", prof, pcols)
    missed = [r for r in results if not r["target_met"]]
    print(f"\nsample >= {TARGET:.0%} of plain inference: {len(results) - len(missed)}/{len(results)} cases "
          f"(median ratio {np.median([r['sample_ratio'] for r in results]):.2f}; "
          f"sample-nospin {np.median([r['sample-nospin_ratio'] for r in results]):.2f}, "
          f"proto-np {np.median([r['proto-np_ratio'] for r in results]):.2f}, "
          f"proto-wide {np.median([r['proto-wide_ratio'] for r in results]):.2f})")
    print(f"wrote {args.out / 'sampling.csv'}, {args.out / 'sampling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
