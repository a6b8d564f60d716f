#!/usr/bin/env python
"""Structured channel drop on the CNN fixtures: accuracy and onnxruntime latency before and after.

Per model (``mnist_cnn_lenet``, ``mnist_cnn_bn_avg``), score and fraction, the ``drop`` transform's
machinery (``onnxcomp.dropping``: one ranking, then removal) is run twice on the same chosen units:

* ``LS``    -- the next tunable layer readjusted by least squares (the LRE transformation T, channel-wise
               over samples x positions for a convolution's channels);
* ``plain`` -- the same units deleted, nothing readjusted.

Scores: ``magnitude`` (‖output kernel‖ · ‖weights reading the channel‖, per layer normalised, as
``-p drop --score magnitude``), ``lap`` (the lookahead channel score, ``-p lookahead,drop --score lap``),
``fisher`` (the Fisher channel saliency on the calib split, ``-p fisher,drop --score fisher``) and
``dependence`` (LRE's greedy order, as ``-p lre``; its exactly dependent units come first and count toward
the fraction, column ``lossless``).  Units: ``all`` ranks dense neurons
and conv channels together (what ``--drop F`` does); ``channels`` drops conv output channels only (F of
them, ``--drop-units channels``) -- the setting that removes MACs.  Fitting uses the calib split (500 rows), accuracy is measured
on the test split (1000 rows) with onnxruntime on the written model; latency is onnxruntime on the CPU,
one thread, batch 1 (and batch 1024, where the MACs rather than the per-call overhead dominate), the
fastest of interleaved rounds of repeated runs (each round's median) (the machine is shared: ratios within one run are
what to read).  No retraining anywhere.

    python bench/channels.py [--quick] [--out bench/out]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxcomp.calibration import CalibrationSet  # noqa: E402
from onnxcomp.conv import is_conv  # noqa: E402
from onnxcomp.dependence import analyse  # noqa: E402
from onnxcomp.dropping import drop_neurons, droppable, ranking  # noqa: E402
from onnxcomp.channels import unit_count  # noqa: E402
from onnxcomp.pipeline import Context, PassManager, spec_of  # noqa: E402
from onnxcomp.reader import read  # noqa: E402
from onnxcomp.scores import FisherScores, LookaheadScores  # noqa: E402
from onnxcomp.writer import to_model  # noqa: E402

MODELS = ["mnist_cnn_lenet", "mnist_cnn_bn_avg"]
FRACTIONS = [0.3, 0.5, 0.7]


def session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    sess = session(model)
    inp = sess.get_inputs()[0]
    shape = [-1] + [d for d in inp.shape[1:]]
    out = sess.run(None, {inp.name: x.reshape(shape).astype(np.float32)})[0]
    return float(np.mean(out.argmax(axis=1) == y))


def latencies(models: list, rounds: int, repeats: int, batch: int = 1) -> list[float]:
    """ms of one run of ``batch`` rows per model: the per-round median, the fastest of the rounds; rounds
    interleave the models so machine noise hits all alike."""
    sessions = [session(m) for m in models]
    feeds = []
    for sess in sessions:
        inp = sess.get_inputs()[0]
        shape = [batch if not isinstance(d, int) else d for d in inp.shape]
        feeds.append({inp.name: np.random.default_rng(0).uniform(0, 1, size=shape).astype(np.float32)})
        for _ in range(20):
            sess.run(None, feeds[-1])
    per = [[] for _ in models]
    for _ in range(rounds):
        for i, (sess, feed) in enumerate(zip(sessions, feeds)):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t)
            per[i].append(float(np.median(times)))
    # the fastest round: other processes on a shared machine only ever add time
    return [1000 * float(np.min(p)) for p in per]


def channels(net) -> str:
    return "x".join(str(layer.out_channels) for layer in net.layers if is_conv(layer) and layer.op == "Conv")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--quick", action="store_true", help="one model, fewer latency rounds")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds, repeats = (3, 200) if args.quick else (7, 400)
    rows = []
    for name in MODELS[: 1 if args.quick else None]:
        net = read(ROOT / "models" / f"{name}.onnx", conv=True)
        calib_npz, test = np.load(ROOT / "models/data/mnist_calib.npz"), np.load(ROOT / "models/data/mnist_test.npz")
        calib = CalibrationSet(data=calib_npz["x"])
        t0 = time.perf_counter()
        dep = analyse(net, calib)
        dep_s = time.perf_counter() - t0
        ctx = Context(data=calib_npz["x"], labels=calib_npz["y"])
        for analysis in ("lookahead", "fisher"):
            PassManager().run_one(spec_of(analysis), net, ctx)
        scores = {"lap": ctx.get(LookaheadScores), "fisher": ctx.get(FisherScores)}
        variants = [("-", "-", 0.0, "-", 0, net)]
        for score in ("magnitude", "lap", "fisher", "dependence"):
            for units in ("all", "channels"):
                pool, _ = ranking(net, score, dep if score == "dependence" else None, scores, units)
                total = sum(unit_count(net.layers[sp.k]) for sp in droppable(net, units))
                cache: dict = {}
                for f in FRACTIONS:
                    chosen = pool[: min(len(pool), int(round(f * total)))]
                    n_lossless = sum(1 for c in chosen if c.lossless)
                    for fit in ("LS", "plain"):
                        new = drop_neurons(net, calib, chosen, dep if score == "dependence" else None, cache,
                                           readjust=fit == "LS")
                        variants.append((score, units, f, fit, n_lossless, new))
        protos = [to_model(v[-1]) for v in variants]
        lat = latencies(protos, rounds, repeats)
        lat_big = latencies(protos, 2 * rounds, max(3, repeats // 100), batch=1024)
        acc0 = accuracy(protos[0], test["x"], test["y"])
        for (score, units, f, fit, n_lossless, new), proto, ms, ms_big in zip(variants, protos, lat, lat_big):
            acc = accuracy(proto, test["x"], test["y"])
            rows.append({"model": name, "score": score, "units": units, "drop": f, "fit": fit, "lossless": n_lossless,
                         "channels": channels(new), "widths_head": "x".join(map(str, [l.n_out for l in new.layers
                                                                                       if not is_conv(l)][:-1])),
                         "macs": new.macs, "bytes": len(proto.SerializeToString()), "accuracy": round(100 * acc, 2),
                         "acc_drop_pts": round(100 * (acc0 - acc), 2), "ms_batch1": round(ms, 4),
                         "speedup": round(lat[0] / ms, 2), "ms_batch1024": round(ms_big, 2),
                         "speedup_1024": round(lat_big[0] / ms_big, 2)})
        print(f"{name}: dependence analysis {dep_s:.2f} s; exactly dependent units "
              f"{sum(d.n_exact for d in dep.layers)} of {sum(len(d.neuron_ids) for d in dep.layers)}")
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("\n== channel drop: test accuracy and onnxruntime latency (CPU, 1 thread, batch 1), LS vs plain removal")
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).rjust(w) for c, w in zip(cols, widths)))
    with (out / "channels.csv").open("w") as fh:
        fh.write(",".join(cols) + "\n")
        for r in rows:
            fh.write(",".join(str(r[c]) for c in cols) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
