"""Lossy compression benchmark: what each score and objective costs in accuracy, bytes and latency.

Sections (tables on stdout, CSV + PNG under bench/out/):

1. pruning   -- test accuracy and cross-entropy vs surviving-weight fraction, without retraining, for
                magnitude, LAP and its variants (LFP, LBP, LAP-forward/-backward and their -seq versions)
                and Fisher saliency (unsupervised Eq. 6, also at temperature T = 8 (paper App. C.3.1: MNIST
                models are over-confident; 8 is from the paper's range 1..9, not tuned here) and
                gradient+Hessian §6.2), per-layer sparsity
                (the papers' setting).  "needed" = the fewest surviving weights before the first sparsity
                step (0.01 grid, scanning up) that loses more than 1 accuracy point.
2. quantize  -- test accuracy and cross-entropy vs bits (1..8) for plain k-means and Fisher-weighted
                k-means (unsupervised importance at T = 1 and 8; the quartic gradient+Hessian objective).
3. storage   -- bytes of each weight storage format vs sparsity (why the writer picks what it picks).
4. latency   -- onnxruntime latency vs MACs for structured drop (the ``drop`` transform, magnitude score).

Scores that need data (Fisher) are computed on the calib split; everything is evaluated on the test split
with onnxruntime on the model the writer emits.  Targets (reported, never asserted):
  * LAP needs <= 0.75x the surviving weights magnitude pruning needs for <= 1 pt accuracy drop;
  * Fisher-weighted k-means loses <= 1 pt at 3 bits and has lower cross-entropy than plain k-means at
    every bit width;
  * onnxruntime latency falls at least 0.8x in proportion to the MACs removed by structured drop.

Usage: python bench/lossy.py [--quick] [--out bench/out] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxcomp.fidelity import class_scores, cross_entropy, measure_latency  # noqa: E402
from onnxcomp.ir import Network  # noqa: E402
from onnxcomp.pipeline import Context, PassManager, spec_of  # noqa: E402
from onnxcomp.reader import read  # noqa: E402
from onnxcomp.storage import candidate_formats, encode_weight  # noqa: E402
from onnxcomp.writer import _Names, to_model  # noqa: E402

MODELS = ROOT / "models"
PRUNE_MODELS = ["digits_2x100", "mnist_2x100", "mnist_2x100_l1", "mnist_4x500"]
QUANT_MODELS = ["digits_2x100", "mnist_2x100", "mnist_2x100_l1"]
LATENCY_MODELS = ["mnist_2x200_l1", "mnist_3x100_l1"]

# name -> (analysis passes, prune options)
PRUNE_METHODS = {
    "magnitude": ([], {"score": "magnitude"}),
    "LAP": (["lookahead"], {"lap_variant": "full"}),
    "LFP": (["lookahead"], {"lap_variant": "forward"}),
    "LBP": (["lookahead"], {"lap_variant": "backward"}),
    "LAP-forward": (["lookahead"], {"lap_variant": "lap-forward"}),
    "LAP-backward": (["lookahead"], {"lap_variant": "lap-backward"}),
    "LAP-forward-seq": (["lookahead"], {"lap_variant": "lap-forward-seq"}),
    "LAP-backward-seq": (["lookahead"], {"lap_variant": "lap-backward-seq"}),
    "fisher-unsup": (["fisher"], {"fisher_objective": "unsupervised"}),
    "fisher-unsup T=8": (["fisher"], {"fisher_objective": "unsupervised", "fisher_temperature": 8.0}),
    "fisher-grad+hess": (["fisher"], {"fisher_objective": "gradient+hessian"}),
}
QUANT_METHODS = {
    "plain k-means": ([], {"score": "magnitude"}),
    "fisher k-means": (["fisher"], {"fisher_objective": "unsupervised"}),
    "fisher k-means T=8": (["fisher"], {"fisher_objective": "unsupervised", "fisher_temperature": 8.0}),
    "fisher quartic k-means": (["fisher"], {"fisher_objective": "gradient+hessian"}),
}


def load(name: str):
    dataset = name.split("_")[0]
    calib = np.load(MODELS / "data" / f"{dataset}_calib.npz")
    test = np.load(MODELS / "data" / f"{dataset}_test.npz")
    return read(str(MODELS / f"{name}.onnx")), calib, test


class Evaluator:
    """Accuracy and cross-entropy on the test split, onnxruntime on the emitted model."""

    def __init__(self, test, device: str):
        self.x, self.y, self.device = test["x"], test["y"], device

    def __call__(self, net: Network) -> tuple[float, float]:
        scores = class_scores(to_model(net), self.x, self.device)
        return float(np.mean(scores.argmax(axis=1) == self.y)), cross_entropy(scores, self.y)


def annotated_context(net: Network, analyses: list, calib, options: dict, device: str) -> Context:
    """A context whose annotations hold the analyses run on the calib split (computed once per method)."""
    ctx = Context(data=calib["x"], labels=calib["y"], options=dict(options), device=device)
    for name in analyses:  # each analysis alone ('fisher' given to PassManager.run is the composite fisher,prune)
        PassManager().run_one(spec_of(name), net, ctx)
    return ctx


def transform(net: Network, name: str, base: Context, **options) -> tuple[Network, dict]:
    ctx = Context(data=base.data, labels=base.labels, options=dict(base.options.flat, **options),
                  annotations=dict(base.annotations), device=base.device)
    out = PassManager().run(net, [name], ctx)
    return out, ctx.log[-1]


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def table(rows: list[dict], cols: list[str], title: str) -> None:
    print(f"\n== {title}")
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_fmt(r[c]).rjust(w) for c, w in zip(cols, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


# ---- 1. pruning -----------------------------------------------------------------------------------

def needed_fraction(evaluate, net, base, acc0: float, step: float) -> tuple[float, float]:
    """(surviving fraction, sparsity) at the last 0.01-step before accuracy first drops > 1 pt."""
    best = 0.0
    s = step
    while s < 0.995:
        acc, _ = evaluate(transform(net, "prune", base, sparsity=round(s, 4))[0])
        if 100 * (acc0 - acc) > 1.0:
            break
        best = s
        s += step
    return 1.0 - best, best


def bench_pruning(args, out: Path, plots) -> list[dict]:
    grid = [0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99]
    if args.quick:
        grid = [0.0, 0.5, 0.8, 0.9, 0.95]
    rows, needed = [], []
    for model in PRUNE_MODELS[: 1 if args.quick else None]:
        net, calib, test = load(model)
        evaluate = Evaluator(test, args.device)
        acc0, ce0 = evaluate(net)
        for method, (analyses, opts) in PRUNE_METHODS.items():
            base = annotated_context(net, analyses, calib, opts, args.device)
            t0 = time.perf_counter()
            for s in grid:
                pruned = transform(net, "prune", base, sparsity=s)[0] if s else net
                acc, ce = evaluate(pruned)
                rows.append({"model": model, "method": method, "sparsity": s, "surviving": round(1 - s, 4),
                             "accuracy": acc, "cross_entropy": ce})
            frac, s_max = needed_fraction(evaluate, net, base, acc0, 0.05 if args.quick else 0.01)
            needed.append({"model": model, "method": method, "acc_dense": acc0, "needed_surviving": round(frac, 4),
                           "max_sparsity": round(s_max, 4), "seconds": round(time.perf_counter() - t0, 1)})
    write_csv(out / "prune_sweep.csv", rows)
    write_csv(out / "prune_needed.csv", needed)
    for model in sorted({r["model"] for r in rows}):
        table([r for r in rows if r["model"] == model and r["method"] in ("magnitude", "LAP", "LAP-forward-seq", "fisher-unsup")],
              ["method", "surviving", "accuracy", "cross_entropy"], f"pruning {model} (selected methods; all in prune_sweep.csv)")
    mag = {r["model"]: r["needed_surviving"] for r in needed if r["method"] == "magnitude"}
    for r in needed:
        r["vs_magnitude"] = round(r["needed_surviving"] / mag[r["model"]], 3)
    table(needed, ["model", "method", "acc_dense", "needed_surviving", "vs_magnitude"],
          "surviving weights needed for <= 1 pt accuracy drop (target: LAP <= 0.75 x magnitude)")
    if plots:
        for model in sorted({r["model"] for r in rows}):
            fig, axes = plots.subplots(1, 2, figsize=(12, 4.5))
            for method in PRUNE_METHODS:
                pts = [r for r in rows if r["model"] == model and r["method"] == method]
                x = [r["surviving"] for r in pts]
                style = "-" if method in ("magnitude", "LAP", "fisher-unsup") else ":"
                axes[0].plot(x, [r["accuracy"] for r in pts], style, marker=".", label=method)
                axes[1].plot(x, [r["cross_entropy"] for r in pts], style, marker=".", label=method)
            for ax, what in zip(axes, ("test accuracy", "test cross-entropy")):
                ax.set_xscale("log")
                ax.invert_xaxis()
                ax.set_xlabel("surviving weight fraction")
                ax.set_ylabel(what)
                ax.grid(alpha=0.3)
            axes[1].set_yscale("log")
            axes[0].legend(fontsize=7)
            fig.suptitle(f"unstructured pruning without retraining: {model}")
            fig.tight_layout()
            fig.savefig(out / f"prune_{model}.png", dpi=120)
            plots.close(fig)
    return needed


# ---- 2. quantization ------------------------------------------------------------------------------

def bench_quantize(args, out: Path, plots) -> list[dict]:
    rows = []
    bit_range = [2, 3, 4] if args.quick else list(range(1, 9))
    for model in QUANT_MODELS[: 1 if args.quick else None]:
        net, calib, test = load(model)
        evaluate = Evaluator(test, args.device)
        acc0, ce0 = evaluate(net)
        dense_bytes = len(to_model(net).SerializeToString())
        for method, (analyses, opts) in QUANT_METHODS.items():
            base = annotated_context(net, analyses, calib, opts, args.device)
            for bits in bit_range:
                q, entry = transform(net, "quantize", base, bits=bits)
                acc, ce = evaluate(q)
                rows.append({"model": model, "method": method, "bits": bits, "accuracy": acc, "acc_drop_pts": 100 * (acc0 - acc),
                             "cross_entropy": ce, "ce_dense": ce0, "bits_per_weight": entry["bits_per_weight"],
                             "file_bytes": entry["file_bytes"], "file_vs_dense": round(entry["file_bytes"] / dense_bytes, 4)})
    write_csv(out / "quantize.csv", rows)
    for model in sorted({r["model"] for r in rows}):
        table([r for r in rows if r["model"] == model], ["method", "bits", "accuracy", "acc_drop_pts", "cross_entropy",
              "bits_per_weight", "file_bytes", "file_vs_dense"], f"k-means weight sharing {model}")
    verdict = []
    for model in sorted({r["model"] for r in rows}):
        plain = {r["bits"]: r for r in rows if r["model"] == model and r["method"] == "plain k-means"}
        for method in [m for m in QUANT_METHODS if m != "plain k-means"]:
            fis = {r["bits"]: r for r in rows if r["model"] == model and r["method"] == method}
            better = [b for b in plain if fis[b]["cross_entropy"] < plain[b]["cross_entropy"]]
            verdict.append({"model": model, "method": method,
                            "drop_at_3_bits": fis[3]["acc_drop_pts"] if 3 in fis else float("nan"),
                            "plain_drop_at_3_bits": plain[3]["acc_drop_pts"] if 3 in plain else float("nan"),
                            "ce_better_at_bits": f"{len(better)}/{len(plain)}",
                            "ce_worse_at": ",".join(str(b) for b in plain if b not in better) or "-"})
    table(verdict, ["model", "method", "drop_at_3_bits", "plain_drop_at_3_bits", "ce_better_at_bits", "ce_worse_at"],
          "targets: Fisher <= 1 pt drop at 3 bits; lower cross-entropy than plain at every bit width")
    if plots:
        for model in sorted({r["model"] for r in rows}):
            fig, axes = plots.subplots(1, 2, figsize=(11, 4.2))
            for method in QUANT_METHODS:
                pts = [r for r in rows if r["model"] == model and r["method"] == method]
                axes[0].plot([r["bits"] for r in pts], [r["accuracy"] for r in pts], marker="o", label=method)
                axes[1].plot([r["bits"] for r in pts], [r["cross_entropy"] for r in pts], marker="o", label=method)
            for ax, what in zip(axes, ("test accuracy", "test cross-entropy")):
                ax.set_xlabel("bits per weight index")
                ax.set_ylabel(what)
                ax.grid(alpha=0.3)
            axes[1].set_yscale("log")
            axes[0].legend(fontsize=8)
            fig.suptitle(f"k-means weight sharing: {model}")
            fig.tight_layout()
            fig.savefig(out / f"quantize_{model}.png", dpi=120)
            plots.close(fig)
    return verdict


# ---- 3. storage formats ---------------------------------------------------------------------------

def bench_storage(args, out: Path, plots) -> None:
    net, calib, _ = load("mnist_2x100")
    base = annotated_context(net, [], calib, {"score": "magnitude"}, args.device)
    dense_file = len(to_model(net).SerializeToString())
    rows = []
    for s in [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995]:
        pruned = transform(net, "prune", base, sparsity=s)[0] if s else net
        for bits in (None, 4):
            cand = pruned if bits is None else transform(pruned, "quantize", base, bits=bits)[0]
            layer = cand.layers[0]  # the 784x100 layer
            model = to_model(cand)
            row = {"sparsity": s, "values": "float32" if bits is None else f"codebook{bits}"}
            for fmt in ("dense", "coo", "bitmask", "delta"):
                if fmt in candidate_formats(layer, 13):
                    row[fmt] = encode_weight(layer, 0, np.float32, _Names(model), 13, positions=fmt).nbytes
                else:
                    row[fmt] = "-"
            row["file_bytes"] = len(model.SerializeToString())
            row["file_vs_dense"] = round(row["file_bytes"] / dense_file, 4)
            row["surviving"] = round(1 - s, 4)
            rows.append(row)
    write_csv(out / "storage.csv", rows)
    table(rows, ["values", "sparsity", "dense", "coo", "bitmask", "delta", "file_bytes", "file_vs_dense", "surviving"],
          "storage of mnist_2x100 layer 0 (784x100) by format, bytes; whole file vs dense file")
    if plots:
        fig, ax = plots.subplots(figsize=(6, 4.2))
        for values in ("float32", "codebook4"):
            pts = [r for r in rows if r["values"] == values]
            ax.plot([r["surviving"] for r in pts], [r["file_vs_dense"] for r in pts], marker="o", label=values)
        ax.plot([0.005, 1], [0.005, 1], "k:", label="proportional")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("surviving weight fraction")
        ax.set_ylabel("file bytes / dense file bytes")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "storage.png", dpi=120)
        plots.close(fig)


# ---- 4. latency vs MACs ---------------------------------------------------------------------------

def bench_latency(args, out: Path, plots) -> list[dict]:
    rows = []
    fractions = [0.0, 0.5, 0.9] if args.quick else [0.0, 0.25, 0.5, 0.75, 0.9]
    rounds = 2 if args.quick else 7
    for model in LATENCY_MODELS[: 1 if args.quick else None]:
        net, calib, test = load(model)
        evaluate = Evaluator(test, args.device)
        base = annotated_context(net, [], calib, {"score": "magnitude"}, args.device)
        variants = [(f, transform(net, "drop", base, drop=f)[0] if f else net) for f in fractions]
        protos = [to_model(v) for _, v in variants]
        # Rounds interleave the variants so that machine noise (other processes, frequency changes)
        # hits all of them alike; the median over rounds is reported.
        samples = [[] for _ in variants]
        for _ in range(rounds):
            for i, proto in enumerate(protos):
                samples[i].append(measure_latency(proto, test["x"], args.device, batches=(1, 1024), seconds=0.3,
                                                  max_repeats=1000))
        lat = [{b: float(np.median([s[b] for s in per])) for b in ("batch_1", "batch_1024")} for per in samples]
        macs0, lat0 = variants[0][1].macs, lat[0]
        for (f, dropped), l in zip(variants, lat):
            acc, _ = evaluate(dropped)
            row = {"model": model, "drop": f, "widths": "x".join(map(str, dropped.widths)), "macs": dropped.macs,
                   "macs_removed": round(1 - dropped.macs / macs0, 4), "accuracy": acc}
            for b in ("batch_1", "batch_1024"):
                row[f"ms_{b}"] = round(l[b], 4)
                removed = 1 - l[b] / lat0[b]
                row[f"lat_removed_{b}"] = round(removed, 4)
                row[f"ratio_{b}"] = round(removed / row["macs_removed"], 3) if row["macs_removed"] > 0 else float("nan")
            rows.append(row)
    write_csv(out / "latency.csv", rows)
    table(rows, ["model", "drop", "widths", "macs", "macs_removed", "accuracy", "ms_batch_1", "ratio_batch_1",
                 "ms_batch_1024", "ratio_batch_1024"],
          "structured drop: onnxruntime latency vs MACs (ratio = latency removed / MACs removed; target >= 0.8)")
    if plots:
        fig, axes = plots.subplots(1, 2, figsize=(11, 4.2))
        for ax, b in zip(axes, ("batch_1", "batch_1024")):
            for model in sorted({r["model"] for r in rows}):
                pts = [r for r in rows if r["model"] == model]
                ax.plot([r["macs"] for r in pts], [r[f"ms_{b}"] for r in pts], marker="o", label=model)
                m0, l0 = pts[0]["macs"], pts[0][f"ms_{b}"]
                ax.plot([r["macs"] for r in pts], [l0 * (1 - 0.8 * (1 - r["macs"] / m0)) for r in pts], ":", color="gray")
            ax.set_xlabel("MACs per sample")
            ax.set_ylabel(f"onnxruntime ms per call ({b.replace('_', ' ')})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("structured drop: latency vs MACs (dotted: the 0.8x-proportional target)")
        fig.tight_layout()
        fig.savefig(out / "latency_macs.png", dpi=120)
        plots.close(fig)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one model per section, coarse grids (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", default="prune,quantize,storage,latency")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plots
    except ImportError:  # plots are optional; tables and CSV are always written
        plots = None
    only = set(args.only.split(","))
    start = time.perf_counter()
    if "prune" in only:
        bench_pruning(args, out, plots)
    if "quantize" in only:
        bench_quantize(args, out, plots)
    if "storage" in only:
        bench_storage(args, out, plots)
    if "latency" in only:
        bench_latency(args, out, plots)
    print(f"\nwrote CSV and PNG to {out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
