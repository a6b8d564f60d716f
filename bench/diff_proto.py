"""Differential bounds (``onnxcomp.diffbounds``) against bounding the two networks separately
(``onnxcomp.formal._diff_bounds``: CROWN of each network, shared input) on real models.

For every model and domain, three pairs: (i) the model and its float32 re-export (``reader.read`` ->
``writer.to_model`` -> read back), (ii) the model and its exact compression (``onnxcomp run -p stable``, made
here unless ``--compressed DIR`` already has ``NAME.onnx``), (iii) mutants with a known difference (output 0's
bias + 1e-3) and with an unknown one (one first-layer weight x 1.01); also every weight rounded to float16 (a
lossy copy of the same architecture: the fixtures are float32, so their float32 re-export is bit-identical).  For each: the largest difference found
by sampling (a floor for any sound bound), the certified ``max |f1 - f2|`` of each method on the whole box
and, for low-dimensional inputs, over a uniform bisection of the box into 2^k pieces, with times.

    python bench/diff_proto.py            # the full table
    python bench/diff_proto.py --quick    # fewer pieces
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from onnxcomp.diffbounds import diff_bounds, match  # noqa: E402
from onnxcomp.domain import parse_domain  # noqa: E402
from onnxcomp.formal import _diff_bounds  # noqa: E402
from onnxcomp.ir import Dense, Network  # noqa: E402
from onnxcomp.reader import read  # noqa: E402
from onnxcomp.writer import save_atomic, to_model  # noqa: E402

ACAS = ROOT / "models" / "external" / "acasxu"
CASES = [
    ("acas_1_1/prop_1", ACAS / "ACASXU_run2a_1_1_batch_2000.onnx", str(ACAS / "prop_1.vnnlib")),
    ("acas_1_1/prop_3", ACAS / "ACASXU_run2a_1_1_batch_2000.onnx", str(ACAS / "prop_3.vnnlib")),
    ("mnist256x2/prop_0_0.03", ROOT / "models" / "external" / "mnistfc" / "mnist-net_256x2.onnx",
     str(ROOT / "models" / "external" / "mnistfc" / "prop_0_0.03.vnnlib")),
    ("mnist_2x100_l1/0:1", ROOT / "models" / "mnist_2x100_l1.onnx", "0:1"),
]
SPLIT_MAX_DIMS = 8


def bisect(lo: np.ndarray, hi: np.ndarray, times: int) -> tuple[np.ndarray, np.ndarray]:
    """2^times pieces: each round halves every piece along its widest dimension relative to the box."""
    los, his = lo[None, :].copy(), hi[None, :].copy()
    span = np.where(hi > lo, hi - lo, 1.0)
    for _ in range(times):
        d = np.argmax((his - los) / span, axis=1)
        mid = (los[np.arange(len(los)), d] + his[np.arange(len(los)), d]) / 2
        left_hi, right_lo = his.copy(), los.copy()
        left_hi[np.arange(len(los)), d] = mid
        right_lo[np.arange(len(los)), d] = mid
        los, his = np.vstack([los, right_lo]), np.vstack([left_hi, his])
    return los, his


def formal_bound(net1: Network, net2: Network, lo: np.ndarray, hi: np.ndarray, chunk: int = 512) -> float:
    best = 0.0
    for s in range(0, len(lo), chunk):
        up, dn, _, _ = _diff_bounds(net1, net2, lo[s:s + chunk], hi[s:s + chunk])
        best = max(best, float(np.maximum(np.maximum(up, dn), 0.0).max()))
    return best


def ours_bound(net1: Network, net2: Network, lo: np.ndarray, hi: np.ndarray, matching, chunk: int = 512, **kw) -> float:
    best = 0.0
    for s in range(0, len(lo), chunk):
        low, up = diff_bounds(net1, net2, lo[s:s + chunk], hi[s:s + chunk], matching, **kw)
        best = max(best, float(np.maximum(np.maximum(up, -low), 0.0).max()))
    return best


def sampled(net1: Network, net2: Network, lo: np.ndarray, hi: np.ndarray, n: int = 20000) -> float:
    rng = np.random.default_rng(0)
    x = rng.uniform(lo, hi, size=(n, lo.size))
    corners = np.where(rng.integers(0, 2, size=(1024, lo.size)) == 1, hi, lo)
    x = np.vstack([x, corners, ((lo + hi) / 2)[None, :]])
    return float(np.abs(net2.forward(x) - net1.forward(x)).max())


def timed(fn, *args, **kw):
    start = time.perf_counter()
    value = fn(*args, **kw)
    return value, time.perf_counter() - start


def reexport(net: Network, folder: Path, name: str) -> Network:
    path = folder / f"{name}_f32.onnx"
    save_atomic(to_model(net), path)
    return read(path)


def compressed(model: Path, domain: str, folder: Path, name: str, given: Path | None) -> Network | None:
    if given is not None and (given / f"{name}.onnx").exists():
        return read(given / f"{name}.onnx")
    out = folder / f"{name}_stable.onnx"
    cmd = [sys.executable, "-m", "onnxcomp", "run", str(model), "-p", "stable", "--domain", domain, "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if res.returncode != 0:
        print(f"  (compression failed: {res.stderr.strip().splitlines()[-1:]})")
        return None
    return read(out)


def rounded16(net: Network) -> Network:
    """Every weight and bias rounded to float16: a lossy copy of the same architecture."""
    return net.with_layers(tuple(Dense(l.weight.astype(np.float16), l.bias.astype(np.float16), l.activation, l.layer_id,
                                       l.neuron_ids) for l in net.layers))


def mutants(net: Network, lo: np.ndarray, hi: np.ndarray) -> list[tuple[str, Network, float | None]]:
    """Output 0's bias + 1e-3 (known difference 1e-3), and the first-layer weight x 1.01 that matters most:
    the neuron most often active on samples of the box, the input with the largest |w| * |x|."""
    out = net.layers[-1]
    bias = out.bias.copy()
    bias[0] += 1e-3
    shifted = net.with_layers(net.layers[:-1] + (Dense(out.weight, bias, out.activation, out.layer_id, out.neuron_ids),))
    first = net.layers[0]
    x = np.random.default_rng(1).uniform(lo, hi, size=(2000, lo.size))
    i = int(np.argmax((first.preactivation(x) > 0).mean(axis=0)))
    j = int(np.argmax(np.abs(first.weight[i]) * np.maximum(np.abs(lo), np.abs(hi)) * (hi > lo)))
    w = first.weight.copy()
    w[i, j] *= 1.01
    scaled = net.with_layers((Dense(w, first.bias, first.activation, first.layer_id, first.neuron_ids),) + net.layers[1:])
    return [("bias0+1e-3", shifted, 1e-3), (f"w0[{i},{j}]*1.01", scaled, None)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer bisection pieces")
    ap.add_argument("--compressed", type=Path, default=None, help="folder with NAME.onnx compressions already made")
    ap.add_argument("--only", default="", help="run only cases whose name contains this")
    args = ap.parse_args()
    depths = [0, 6] if args.quick else [0, 6, 10]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, model, domain in CASES:
            if args.only and args.only not in name:
                continue
            net = read(model)
            box = parse_domain(domain, net.input_size)
            tag = name.replace("/", "_").replace(":", "")
            pairs = [("f32 re-export", reexport(net, folder, tag), None)]
            comp = compressed(model, domain, folder, tag, args.compressed)
            if comp is not None:
                pairs.append((f"stable {comp.widths}", comp, None))
            pairs.append(("f16-rounded", rounded16(net), None))
            pairs += mutants(net, box.lo, box.hi)
            for what, other, known in pairs:
                m, t_match = timed(match, net, other, box.lo, box.hi)
                floor = sampled(net, other, box.lo, box.hi)
                for depth in depths if box.size <= SPLIT_MAX_DIMS else [0]:
                    lo, hi = bisect(box.lo, box.hi, depth)
                    f, t_f = timed(formal_bound, net, other, lo, hi)
                    o, t_o = timed(ours_bound, net, other, lo, hi, m)
                    s, t_s = timed(ours_bound, net, other, lo, hi, m, symmetric=True)
                    rows.append([name, what, len(lo), floor if known is None else known, f, t_f, o, t_o + (t_match if depth == 0 else 0.0),
                                 s, t_s, f"{len(m.layers) - 1}/{min(len(net.layers), len(other.layers)) - 1}"])
                    print_row(rows[-1], flush=True)
    print()
    print_table(rows)


HEAD = ["model/domain", "pair", "pieces", "true>=", "separate", "s", "diff", "s", "diff+sym", "s", "aligned"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def print_row(row, flush=False) -> None:
    print("  " + "  ".join(_fmt(v) for v in row), flush=flush)


def print_table(rows) -> None:
    cells = [HEAD] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEAD))]
    for k, c in enumerate(cells):
        print(" | ".join(s.ljust(w) for s, w in zip(c, widths)))
        if k == 0:
            print("-+-".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
