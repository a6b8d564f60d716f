#!/usr/bin/env python
"""Exact compression of convolutional networks: ``-p stable`` on the CNN fixtures and the oval21 CIFAR model.

Per model and box, in one run:

* the **sampled upper bound** on the stable units of every ReLU layer (uniform samples of the box, its centre
  and random corners, float64 forward: a unit never seen active or never seen inactive could be stable; a
  proof can claim no more);
* what ``onnxcomp.compress(model, "stable", domain=box, time_limit=...)`` proves per layer (inactive +
  active), the units left undecided, the channels removed and the head inputs removed;
* bytes, nonzero parameters and MACs before and after; onnxruntime latency before and after (CPU, one
  thread, batch 1, median of repeated runs: a ratio measured in the same process);
* wall time and the share of each stage.

For ``cifar_base_kw`` the figures the issue measured (3000 uniform samples + centre + corners; interval
bounds) are printed beside ours.  Output: tables on stdout, ``bench/out/cnn.csv`` and ``bench/out/cnn.png``.

    python bench/cnn.py            # every model, both ε of image 0, --time-limit 300
    python bench/cnn.py --quick    # one box per model, --time-limit 120
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import EXTERNAL, MODELS, OUT, print_table, pyplot, write_csv

import onnxcomp
from onnxcomp.domain import parse_domain
from onnxcomp.reader import load_model, lower, read

OVAL = EXTERNAL / "oval21"
CASES = [
    ("cifar_base_kw", OVAL / "cifar_base_kw.onnx", [OVAL / "cifar_base_kw-img1598-eps0.0026143790849673205.vnnlib"]),
    *((name, MODELS / f"{name}.onnx", [MODELS / "boxes" / f"mnist_cnn_img0_eps{eps}.vnnlib" for eps in ("0.01", "0.02")])
      for name in ("mnist_cnn_transpose", "mnist_cnn_bn_avg", "mnist_cnn_lenet")),
]
ISSUE_CIFAR = {  # issue 17's sampled figures (never active, always active) and interval-bound figures
    "sampled": {0: (1333, 689), 1: (516, 496), 2: (73, 27)},
    "interval": "501 of 1024 head inputs constant, 84 of 100 head ReLUs stable, 2 of 8 conv1 channels dead",
}


def sampled_stable(net, box, n: int, seed: int = 0) -> dict:
    """Per ReLU layer (IR index): (units never seen active, units never seen inactive) on samples of the box."""
    rng = np.random.default_rng(seed)
    never_on, never_off = {}, {}
    chunks = [box.sample(n, rng), np.vstack([(box.lo + box.hi) / 2, box.corners(64, rng)])]
    for x in chunks:
        _, pres = net.forward(x, preactivations=True)
        for k, layer in enumerate(net.layers[:-1]):
            if not layer.is_relu:
                continue
            on, off = (pres[k] > 0).any(axis=0), (pres[k] < 0).any(axis=0)
            never_on[k] = never_on.get(k, np.ones_like(on)) & ~on
            never_off[k] = never_off.get(k, np.ones_like(off)) & ~off
    return {k: (int(never_on[k].sum()), int((never_off[k] & ~never_on[k]).sum()), net.layers[k].layer_id)
            for k in never_on}


def latency(model, repeats: int) -> float:
    """Median seconds of one batch-1 run on the CPU with one thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.default_rng(0).uniform(0, 1, size=shape).astype(np.float32)
    for _ in range(10):
        sess.run(None, {inp.name: x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one box per model, --time-limit 120")
    ap.add_argument("--time-limit", type=float, default=None)
    ap.add_argument("--samples", type=int, default=3000, help="uniform samples for the sampled upper bound")
    ap.add_argument("--only", nargs="*", help="model names")
    args = ap.parse_args(argv)
    limit = args.time_limit or (120.0 if args.quick else 300.0)
    rows, layer_rows = [], []
    for name, path, boxes in CASES:
        if args.only and name not in args.only:
            continue
        for box_path in boxes[:1] if args.quick else boxes:
            net = read(path, conv=True)
            box = parse_domain(str(box_path), net.input_size)
            sampled = sampled_stable(net, box, args.samples)
            start = time.perf_counter()
            result = onnxcomp.compress(str(path), "stable", domain=str(box_path), time_limit=limit)
            wall = time.perf_counter() - start
            r = result.report
            before, after = r["model"]["before"], r["model"]["after"]
            stable = r["stable"]
            proven = sampled_total = undecided = units = 0
            for layer in stable["layers"]:
                k = next((k for k, (_, _, lid) in sampled.items() if lid == layer["layer"]), None)
                if k is None:
                    continue
                never_on, never_off, _ = sampled[k]
                p = len(layer["inactive"]) + len(layer["active"])
                proven, sampled_total = proven + p, sampled_total + never_on + never_off
                undecided, units = undecided + len(layer["undecided"]), units + layer["width"]
                issue = ISSUE_CIFAR["sampled"].get(layer["layer"]) if name == "cifar_base_kw" else None
                layer_rows.append({
                    "model": name, "box": box_path.stem[-12:], "layer": layer["layer"],
                    "kind": layer.get("kind", "dense"), "units": layer["width"],
                    "sampled_stable": never_on + never_off, "proven": p, "proven_inactive": len(layer["inactive"]),
                    "proven_active": len(layer["active"]), "undecided": len(layer["undecided"]),
                    "channels_removed": layer.get("channels_removed", 0),
                    "issue_sampled": "" if issue is None else sum(issue)})
            passes = {e["name"]: e["seconds"] for e in r["passes"]}
            total = sum(passes.values()) or 1.0
            rows.append({
                "model": name, "box": box_path.stem[-12:], "units": units, "sampled_stable": sampled_total,
                "proven": proven, "proven/sampled": proven / max(sampled_total, 1), "undecided": undecided,
                "head_in_before": next(l.n_in for l in net.layers if not hasattr(l, "kernel")),
                "head_in_after": next((l.n_in for l in lower(result.model, conv=True).layers
                                       if not hasattr(l, "kernel")), 0),
                "bytes_before": before["file_bytes"], "bytes_after": after["file_bytes"],
                "bytes_ratio": after["file_bytes"] / before["file_bytes"],
                "nonzero_before": before["nonzero_params"], "nonzero_after": after["nonzero_params"],
                "macs_before": before["macs"], "macs_after": after["macs"],
                "latency_ratio": latency(result.model, 300) / latency(load_model(path), 300),
                "wall_s": wall, **{f"share_{k}": v / total for k, v in passes.items()},
                "verified": r["verification"]["passed"]})
    columns = ["model", "box", "units", "sampled_stable", "proven", "proven/sampled", "undecided", "head_in_before",
               "head_in_after", "bytes_before", "bytes_after", "bytes_ratio", "nonzero_before", "nonzero_after",
               "macs_before", "macs_after", "latency_ratio", "wall_s", "share_sample", "share_bounds",
               "share_falsify", "share_milp", "share_fold", "verified"]
    print_table(rows, columns, f"-p stable on CNNs (--time-limit {limit:g}, SCIP)")
    layer_columns = ["model", "box", "layer", "kind", "units", "sampled_stable", "proven", "proven_inactive",
                     "proven_active", "undecided", "channels_removed", "issue_sampled"]
    print_table(layer_rows, layer_columns, "per ReLU layer (issue_sampled: issue 17's sampled figure for cifar_base_kw)")
    print(f"issue 17, cifar_base_kw by interval bounds alone: {ISSUE_CIFAR['interval']}")
    OUT.mkdir(parents=True, exist_ok=True)
    write_csv(OUT / "cnn.csv", rows, columns)
    write_csv(OUT / "cnn_layers.csv", layer_rows, layer_columns)
    plt = pyplot()
    if plt is not None and rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [f"{r['model']}\n{r['box']}" for r in rows]
        xs = np.arange(len(rows))
        ax.bar(xs - 0.2, [r["sampled_stable"] / r["units"] for r in rows], 0.4, label="sampled upper bound")
        ax.bar(xs + 0.2, [r["proven"] / r["units"] for r in rows], 0.4, label="proven stable")
        ax.set_xticks(xs, labels, fontsize=7)
        ax.set_ylabel("share of ReLU units")
        ax.legend()
        fig.tight_layout()
        fig.savefig(OUT / "cnn.png", dpi=120)


if __name__ == "__main__":
    main()
