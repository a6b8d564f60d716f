#!/usr/bin/env python
"""``verify --formal`` at the issue's scale: exact outputs of real networks certified by certificate replay
(or differential bounds), re-exported copies in seconds, mutants with a known difference never certified.

For each network and domain: ``onnxcomp.compress(-p stable)`` writes the exact output (its time is not the
point here), then ``onnxcomp.verify(formal=True, time_limit=T)`` checks it against the original the way a CI
job would, at the sampled check's tolerance.  Printed: the verdict, the method that certified, the bound
and the tolerance, the wall time; CSV under bench/out/formal.csv.  Also: the same network written again
without onnxcomp's metadata (a re-export: no certificate, differential bounds alone) and two mutants of the
exact output whose difference is known (an output bias shifted by 1e-3, one output weight x1.01, measured
on samples), checked at a tolerance a tenth of that difference.

Anchor: VeryDiff (Teuber et al.) reports a median speedup of more than 300x over alpha,beta-CROWN on the
equivalence of pruned networks; its benchmark networks are not among ours, so no row compares the two.

Usage: python bench/formal.py [--quick] [--time-limit 60]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxcomp  # noqa: E402
from onnxcomp.api import load_domain  # noqa: E402
from onnxcomp.ir import Dense  # noqa: E402
from onnxcomp.reader import lower  # noqa: E402
from onnxcomp.writer import to_model  # noqa: E402

EXT = ROOT / "models" / "external"
CASES = [  # the held-out style set: (name, model, domain)
    ("ACAS Xu 1_9 prop_3", EXT / "acasxu/ACASXU_run2a_1_9_batch_2000.onnx", EXT / "acasxu/prop_3.vnnlib"),
    ("ACAS Xu 2_1 prop_4", EXT / "acasxu/ACASXU_run2a_2_1_batch_2000.onnx", EXT / "acasxu/prop_4.vnnlib"),
    ("ACAS Xu 3_3 prop_3", EXT / "acasxu/ACASXU_run2a_3_3_batch_2000.onnx", EXT / "acasxu/prop_3.vnnlib"),
    ("ACAS Xu 1_1 prop_1", EXT / "acasxu/ACASXU_run2a_1_1_batch_2000.onnx", EXT / "acasxu/prop_1.vnnlib"),
    ("lunarlander", EXT / "rl_benchmarks/lunarlander.onnx", EXT / "rl_benchmarks/lunarlander_case_safe_0.vnnlib"),
    ("dubinsrejoin", EXT / "rl_benchmarks/dubinsrejoin.onnx", EXT / "rl_benchmarks/dubinsrejoin_case_safe_0.vnnlib"),
    ("robot (reach-prob)", EXT / "reach_prob_density/robot.onnx", EXT / "reach_prob_density/robot_0.vnnlib"),
    ("mnistfc 256x2 prop_0 eps .03", EXT / "mnistfc/mnist-net_256x2.onnx", EXT / "mnistfc/prop_0_0.03.vnnlib"),
]
QUICK = {"ACAS Xu 1_9 prop_3", "lunarlander", "mnistfc 256x2 prop_0 eps .03"}


def mutant(model: onnx.ModelProto, kind: str, domain) -> tuple[onnx.ModelProto, float]:
    net = lower(model)
    layers = list(net.layers)
    last = layers[-1]
    if kind == "bias":
        b = np.array(last.bias)
        b[0] += 1e-3
        layers[-1] = Dense(last.weight, b, last.activation)
    box = load_domain(str(domain), net.input_size, None)
    x = np.vstack([box.sample(20000, np.random.default_rng(0)), box.corners(256, np.random.default_rng(1))])
    if kind != "bias":
        # a weight on a path that is active on the samples: the neuron feeding output 0 with the largest
        # |weight| times its smallest activation (an always-active neuron when there is one)
        _, pres = net.forward(x, preactivations=True)
        h = np.maximum(pres[-2], 0.0) if net.layers[-2].is_relu else pres[-2]
        w = np.array(last.weight)
        col = int(np.argmax(np.abs(w[0]) * (h.min(axis=0) + 1e-3 * h.mean(axis=0))))
        w[0, col] *= 1.01
        layers[-1] = Dense(w, last.bias, last.activation)
    other = net.with_layers(layers)
    known = float(np.abs(other.forward(x) - net.forward(x)).max())
    meta = {p.key.removeprefix("onnxcomp."): p.value for p in model.metadata_props
            if p.key.startswith("onnxcomp.") and p.key != "onnxcomp.version"}
    return to_model(other, metadata=meta), known


def check(ref, cand, time_limit: float, **kw) -> dict:
    t0 = time.perf_counter()
    r = onnxcomp.verify(ref, cand, formal=True, time_limit=time_limit, **kw)
    wall = time.perf_counter() - t0
    f = r.formal
    return {"passed": r.passed, "method": f["method"], "bound": f["certified_max_abs_diff"], "tol": f["tolerance"],
            "found": f["found_max_abs_diff"], "wall": wall,
            "replay": (f.get("replay") or {}).get("reason", "") if not (f.get("replay") or {}).get("certified") else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three cases, no mutants of the others")
    ap.add_argument("--time-limit", type=float, default=60.0)
    args = ap.parse_args()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="onnxcomp-formal-"))
    for name, model, domain in CASES:
        if args.quick and name not in QUICK:
            continue
        t0 = time.perf_counter()
        result = onnxcomp.compress(str(model), "stable", domain=str(domain), time_limit=300)
        compress_s = time.perf_counter() - t0
        exact = work / f"{model.stem}_{domain.stem}.onnx"
        result.save(exact)
        widths = f"{result.report['model']['before']['widths']} -> {result.report['model']['after']['widths']}"
        rows.append(dict(case=name, pair="exact output", widths=widths, compress_s=compress_s,
                         **check(str(model), str(exact), args.time_limit)))
        reexport = work / f"{model.stem}_reexport.onnx"
        onnx.save(to_model(lower(onnx.load(model))), reexport)
        rows.append(dict(case=name, pair="re-export", widths="", compress_s=0.0,
                         **check(str(model), str(reexport), args.time_limit, domain=str(domain))))
        for kind in ("bias", "weight"):
            m, known = mutant(result.model, kind, domain)
            path = work / f"{model.stem}_{kind}.onnx"
            onnx.save(m, path)
            out = check(str(model), str(path), args.time_limit, atol=known / 10, rtol=0.0)
            rows.append(dict(case=name, pair=f"mutant {kind} (diff {known:.2g})", widths="", compress_s=0.0, **out))
        for r in rows[-4:]:
            print(f"{r['case']:<30} {r['pair']:<28} {'PASSED' if r['passed'] else 'FAILED':<6} {r['wall']:6.1f} s  "
                  f"bound {r['bound']:.3g} tol {r['tol']:.3g}  {r['method']}"
                  + (f"  [replay: {r['replay'][:90]}]" if r['replay'] and r['pair'] == 'exact output' else ""),
                  flush=True)
    exact = [r for r in rows if r["pair"] == "exact output"]
    print(f"\nexact outputs certified: {sum(r['passed'] for r in exact)} of {len(exact)}; "
          f"median {np.median([r['wall'] for r in exact]):.1f} s; by replay alone: "
          f"{sum(r['passed'] and r['method'] == 'certificate replay' for r in exact)}")
    mutants = [r for r in rows if r["pair"].startswith("mutant")]
    print(f"mutants certified (must be 0): {sum(r['passed'] for r in mutants)} of {len(mutants)}")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "formal.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out / 'formal.csv'}")


if __name__ == "__main__":
    main()
