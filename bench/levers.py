"""Stability levers (issue 11): an ablation: how many ReLU neurons stay undecided on deep / wide networks, and where the
time goes, for the building blocks of ``onnxcomp.bounds`` (alpha-CROWN), ``onnxcomp.stability.feasibility`` (per-side
feasibility MILPs with SCIP or HiGHS, branch and bound on ReLU states) and ``onnxcomp.stability.tighten``, against
the current pipeline (``python -m onnxcomp run MODEL -p stable --domain BOX --time-limit T --solver scip``).

Every run is a child process with the same wall-clock limit ``--time-limit`` (default 300 s); the child of a
strategy is killed at 2T + 120 s, and a killed run is reported as such.  A row says, per network and box:

  neurons    hidden ReLU neurons
  bounds     proven by CROWN (and alpha-CROWN for our strategies) alone
  witness    open sides (neuron states neither proven nor witnessed) left after the witness search
  undecided  neurons neither proven stable nor witnessed unstable at the end (the goal: <= 1 %)
  wall       seconds for the whole analysis (the baseline: its sample..milp passes)
  then seconds per stage: crown+alpha, witness, bab, milp (summed over layers and rounds)

Strategies (``--strategies``, comma-separated):

  baseline     the pipeline as it is (``--baseline-root`` chooses the checkout it runs from)
  bounds       CROWN + alpha-CROWN + witnesses only (no search)
  milp-scip    per-side feasibility MILPs, SCIP, layer by layer (schedule milp 2..60 s per side)
  milp-highs   the same with HiGHS
  bab          branch and bound on ReLU states only (1..60 s per side)
  auto         the recommended default (``feasibility.settle``'s defaults, ``SCHEDULES``): for more than 8
               inputs per layer bab (1..10 s per side) then SCIP MILPs (0.5..3 s), each a probe dropped for
               the layer when its first wave settles nothing, later rounds (>= 30 s per side, doubling)
               with the method that proved the most of the layer's sides (else bab); for at most 8
               inputs per layer SCIP MILPs (1..10 s) then bab (1..10 s), later rounds SCIP (>= 30 s)
  bab+milp     per layer bab (1..10 s) then SCIP MILPs (5..30 s), second round bab
  noalpha      auto without alpha-CROWN (CROWN bounds only): what the optimised slopes are worth
  notighten    auto without intermediate tightening (lever 4, issue 18; ``settle(tighten=0)``): the
               schedule before it
  refine       auto with per-piece intermediate bounds in the branch and bound (lever 2, issue 18;
               ``bab_side(refine=True)``, ``bounds.piece_bounds``)
  regions      lever 5 (issue 18), networks of at most two inputs: the exact linear regions alone
               (``stability.regions.explore``: polygons cut along ReLU boundaries, ranges at the vertices),
               every hidden neuron's two sides open, no sampling and no bounds before it

``--workers N`` runs N per-side units at once (process pool; 1 = serial).  Results accumulate in
``bench/out/levers.jsonl`` (one line per run); ``--report-only`` prints the table from it.  Nothing is
asserted: this prints measurements.

Usage: python bench/levers.py [--cases a,b] [--strategies s1,s2] [--time-limit 300] [--workers 1]
                                   [--baseline-root DIR] [--results FILE] [--report-only] [--list]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
EXT = MODELS / "external"
OUT = ROOT / "bench" / "out"

CASES = {
    # deep local boxes (models/train_fixtures.py)
    **{f"4x256_img{r}_eps{e}": (MODELS / "mnist_4x256.onnx", MODELS / "boxes" / f"mnist_img{r}_eps{e}.vnnlib")
       for r in (0, 1, 2) for e in ("0.015", "0.03", "0.05")},
    **{f"6x256_img{r}_eps{e}": (MODELS / "mnist_6x256.onnx", MODELS / "boxes" / f"mnist_img{r}_eps{e}.vnnlib")
       for r in (0, 1, 2) for e in ("0.015", "0.03", "0.05")},
    **{f"8x200_img{r}_eps{e}": (MODELS / "mnist_8x200.onnx", MODELS / "boxes" / f"mnist_img{r}_eps{e}.vnnlib")
       for r in (0, 1, 2) for e in ("0.015", "0.03", "0.05")},
    # wide global box
    "2x800_l1_0:1": (MODELS / "mnist_2x800_l1.onnx", "0:1"),
    "4x500_0:1": (MODELS / "mnist_4x500.onnx", "0:1"),
    "3x100_l1_0:1": (MODELS / "mnist_3x100_l1.onnx", "0:1"),
    # VNN-COMP networks
    "mnistfc_256x2_p0_0.03": (EXT / "mnistfc" / "mnist-net_256x2.onnx", EXT / "mnistfc" / "prop_0_0.03.vnnlib"),
    "mnistfc_256x4_p1_0.03": (EXT / "mnistfc" / "mnist-net_256x4.onnx", EXT / "mnistfc" / "prop_1_0.03.vnnlib"),
    "mnistfc_256x6_p1_0.03": (EXT / "mnistfc" / "mnist-net_256x6.onnx", EXT / "mnistfc" / "prop_1_0.03.vnnlib"),
    "eran_9x200_0.015": (EXT / "eran" / "mnist_relu_9_200.onnx", EXT / "eran" / "mnist_spec_idx_8098_eps_0.01500.vnnlib"),
    "acas_1_1_p1": (EXT / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx", EXT / "acasxu" / "prop_1.vnnlib"),
    "acas_5_9_p1": (EXT / "acasxu" / "ACASXU_run2a_5_9_batch_2000.onnx", EXT / "acasxu" / "prop_1.vnnlib"),
    "tll_N8": (EXT / "tll" / "tll_n2_N8_instance_0_0.onnx", EXT / "tll" / "property_N8_0.vnnlib"),
    "tll_N16": (EXT / "tll" / "tll_n2_N16_instance_1_0.onnx", EXT / "tll" / "property_N16_0.vnnlib"),
}
DEFAULT_CASES = ["4x256_img0_eps0.015", "4x256_img0_eps0.03", "4x256_img0_eps0.05", "6x256_img0_eps0.03",
                 "8x200_img0_eps0.03", "2x800_l1_0:1", "mnistfc_256x2_p0_0.03", "mnistfc_256x4_p1_0.03",
                 "eran_9x200_0.015", "acas_5_9_p1", "tll_N8"]

STRATEGIES = {
    "bounds": {"schedule": (), "second_round": False},
    "milp-scip": {"schedule": (("milp", 2.0, 60.0),), "solver": "scip", "final": ("milp", 60.0)},
    "milp-highs": {"schedule": (("milp", 2.0, 60.0),), "solver": "highs", "final": ("milp", 60.0)},
    "bab": {"schedule": (("bab", 1.0, 60.0),), "final": ("bab", 60.0)},
    "auto": {},
    "bab+milp": {"schedule": (("bab", 1.0, 10.0), ("milp", 5.0, 30.0)), "final": ("bab", 30.0)},
    "noalpha": {"alpha_iterations": 0},
    "notighten": {"tighten": 0.0},
    "refine": {"refine": True},
}


# ---- child: one run --------------------------------------------------------------------------------------
def child(case: str, strategy: str, time_limit: float, workers: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from onnxcomp.domain import parse_domain
    from onnxcomp.stability.feasibility import settle
    from onnxcomp.reader import read

    model, domain = CASES[case]
    net = read(model)
    box = parse_domain(str(domain), net.input_size)
    if strategy == "regions":
        return regions_child(case, net, box, time_limit)
    kwargs = dict(STRATEGIES[strategy])
    pool = None
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers)
        kwargs.update(map_fn=pool.map, parallel=workers)
    t0 = time.monotonic()
    st = settle(net, box.lo, box.hi, time_limit=time_limit, **kwargs)
    wall = time.monotonic() - t0
    if pool is not None:
        pool.shutdown()
    hidden = [k for k in range(len(net.layers) - 1) if net.layers[k].is_relu]
    per_stage: dict = {}
    for s in st.stages:
        name = s["stage"].split("-")[0] if s["stage"].startswith("milp") else s["stage"]
        name = {"crown": "bounds", "alpha": "bounds", "alpha-refresh": "bounds"}.get(name, name)
        per_stage[name] = per_stage.get(name, 0.0) + s["seconds"]
    bounds_proven = sum(int(((st.certificate[k] == "bounds") | (st.certificate[k] == "alpha")).sum()) for k in hidden)
    witness_open = next((s["open_after"] for s in st.stages if s["stage"] == "witness"), None)
    counts = st.counts()
    certs: dict = {}
    for k in hidden:
        for c in st.certificate[k][st.stably_inactive[k] | st.stably_active[k]]:
            certs[c] = certs.get(c, 0) + 1
    return {"case": case, "strategy": strategy, "time_limit": time_limit, "workers": workers,
            "neurons": sum(net.layers[k].n_out for k in hidden), "bounds": bounds_proven, "witness_open": witness_open,
            **counts, "wall": round(wall, 1), "stages": {k: round(v, 1) for k, v in per_stage.items()},
            "certificates": certs, "conflicts": len(st.conflicts),
            "layers": [{"stage": s["stage"], "layer": s.get("layer"), "open_before": s["open_before"],
                        "open_after": s["open_after"], "seconds": round(s["seconds"], 1),
                        "median_side": round(s.get("median_side", 0.0), 2), "max_side": round(s.get("max_side", 0.0), 1)}
                       for s in st.stages]}


def regions_child(case: str, net, box, time_limit: float) -> dict:
    """Lever 5: the regions search on its own, every hidden neuron's sides open."""
    from onnxcomp.stability.regions import allowances, explore, supports
    from onnxcomp.stability.state import epsilons, witness_floor
    from onnxcomp.timing import Deadline

    hidden = [k for k in range(len(net.layers) - 1) if net.layers[k].is_relu]
    rec = {"case": case, "strategy": "regions", "time_limit": time_limit, "workers": 1,
           "neurons": sum(net.layers[k].n_out for k in hidden)}
    if not supports(net):
        return dict(rec, error=f"{net.input_size} inputs: the regions search needs at most 2")
    n = len(net.layers) - 1
    eps = epsilons(net, box.lo, box.hi)
    every = [np.full(layer.n_out, layer.is_relu) for layer in net.layers[:n]]
    none = [np.zeros(layer.n_out, bool) for layer in net.layers]
    t0 = time.monotonic()
    found = explore(net, box.lo, box.hi, every, [m.copy() for m in every], witness_floor(eps)[:n], none, none,
                    Deadline(time_limit))
    wall = time.monotonic() - t0
    _, allow = allowances(net, box.lo, box.hi)
    counts = dict.fromkeys(("stably_inactive", "stably_active", "unstable", "undecided"), 0)
    certs: dict = {}
    for k in hidden:
        done = k <= found.finished
        top, bottom = found.upper[k] + allow[k], found.lower[k] - allow[k]
        inactive = done & ~found.seen_active[k] & (top < eps[k])
        active = done & ~found.seen_inactive[k] & (bottom > -eps[k]) & ~inactive
        unstable = found.seen_active[k] & found.seen_inactive[k]
        counts["stably_inactive"] += int(inactive.sum())
        counts["stably_active"] += int(active.sum())
        counts["unstable"] += int(unstable.sum())
        counts["undecided"] += int((~inactive & ~active & ~unstable).sum())
        exact = int((inactive & (top <= 0)).sum() + (active & (bottom >= 0)).sum())
        certs["split"] = certs.get("split", 0) + exact
        certs["split-epsilon"] = certs.get("split-epsilon", 0) + int((inactive | active).sum()) - exact
    return dict(rec, bounds=0, witness_open=None, **counts, wall=round(wall, 1), stages={"regions": round(wall, 1)},
                certificates=certs, pieces=found.pieces, cuts=found.cuts, complete=found.complete)


def baseline(case: str, time_limit: float, root: Path) -> dict:
    model, domain = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "onnxcomp", "run", str(model), "-p", "stable", "--domain", str(domain),
               "--time-limit", str(time_limit), "--solver", "scip", "-o", str(Path(tmp) / "out.onnx"),
               "--report", str(report)]
        env = dict(os.environ, PYTHONPATH=str(root))
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=2 * time_limit + 300)
        except subprocess.TimeoutExpired:
            return {"case": case, "strategy": "baseline", "time_limit": time_limit, "error": "killed"}
        wall = time.monotonic() - t0
        if not report.exists():
            return {"case": case, "strategy": "baseline", "time_limit": time_limit,
                    "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no report"]}
        r = json.loads(report.read_text())
    passes = {p["name"]: p for p in r["passes"]}
    totals = r.get("stable", {}).get("totals", {})
    bounds_p = passes.get("bounds", {})
    stages = {n: round(passes[n]["seconds"], 1) for n in ("sample", "bounds", "falsify", "milp") if n in passes}
    return {"case": case, "strategy": "baseline", "time_limit": time_limit, "workers": 1,
            "neurons": sum(l["width"] for l in r.get("stable", {}).get("layers", [])) or None,
            "bounds": (bounds_p.get("proven_inactive", 0) or 0) + (bounds_p.get("proven_active", 0) or 0),
            "witness_open": passes.get("falsify", {}).get("open_after"),
            "stably_inactive": totals.get("stably_inactive"), "stably_active": totals.get("stably_active"),
            "unstable": totals.get("unstable"), "undecided": totals.get("undecided"),
            "wall": round(sum(stages.values()), 1), "process_wall": round(wall, 1), "stages": stages}


# ---- parent ----------------------------------------------------------------------------------------------
def run_one(case: str, strategy: str, time_limit: float, workers: int, root: Path) -> dict:
    if strategy == "baseline":
        return baseline(case, time_limit, root)
    cmd = [sys.executable, __file__, "--child", case, strategy, str(time_limit), str(workers)]
    env = dict(os.environ, OMP_NUM_THREADS="1" if workers > 1 else os.environ.get("OMP_NUM_THREADS", ""),
               OPENBLAS_NUM_THREADS="1" if workers > 1 else os.environ.get("OPENBLAS_NUM_THREADS", ""))
    env = {k: v for k, v in env.items() if v != ""}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * time_limit + 120, env=env)
    except subprocess.TimeoutExpired:
        return {"case": case, "strategy": strategy, "time_limit": time_limit, "error": "killed"}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
        return {"case": case, "strategy": strategy, "time_limit": time_limit,
                "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


COLUMNS = ["case", "strategy", "neurons", "bounds", "witness_open", "undecided", "undecided_%", "wall", "t_bounds",
           "t_witness", "t_bab", "t_milp", "certificates"]


def table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        st = r.get("stages", {})
        row = dict(r)
        n, u = r.get("neurons"), r.get("undecided")
        row["undecided_%"] = f"{100 * u / n:.1f}" if n and u is not None else ""
        if r.get("strategy") == "baseline":
            row["t_bounds"], row["t_witness"], row["t_milp"] = st.get("bounds"), st.get("falsify"), st.get("milp")
            row["t_bab"] = ""
        else:
            row["t_bounds"], row["t_witness"] = st.get("bounds"), st.get("witness")
            row["t_bab"], row["t_milp"] = st.get("bab"), st.get("milp")
        row["certificates"] = " ".join(f"{k}:{v}" for k, v in sorted(r.get("certificates", {}).items()))
        if "error" in r:
            row["undecided"] = f"error: {r['error']}"
        out.append(row)
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in out)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS), "  ".join("-" * widths[c] for c in COLUMNS)]
    lines += ["  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in COLUMNS) for r in out]
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        case, strategy, tl, workers = sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(child(case, strategy, tl, workers)))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES))
    ap.add_argument("--strategies", default="baseline,bounds,auto")
    ap.add_argument("--time-limit", type=float, default=300.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--baseline-root", default=str(ROOT))
    ap.add_argument("--results", default=str(OUT / "levers.jsonl"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for name, (m, d) in CASES.items():
            print(f"{name:28s} {'ok ' if Path(m).exists() else 'missing'} {m} {d}")
        return
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    cases = [c for c in args.cases.split(",") if c]
    strategies = [s for s in args.strategies.split(",") if s]
    if not args.report_only:
        for case in cases:
            model, domain = CASES[case]
            if not Path(model).exists():
                print(f"skip {case}: {model} missing", file=sys.stderr)
                continue
            for strategy in strategies:
                r = run_one(case, strategy, args.time_limit, args.workers, Path(args.baseline_root))
                with results.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(table([r]).splitlines()[-1], flush=True)
    rows = [json.loads(l) for l in results.read_text().splitlines() if l.strip()] if results.exists() else []
    latest: dict = {}
    for r in rows:  # the last run of each (case, strategy, time limit, workers)
        latest[(r["case"], r["strategy"], r.get("time_limit"), r.get("workers", 1))] = r
    order = {c: i for i, c in enumerate(CASES)}
    shown = sorted(latest.values(), key=lambda r: (order.get(r["case"], 999), r.get("time_limit", 0), r["strategy"]))
    shown = [r for r in shown if r["case"] in cases and r["strategy"] in strategies]
    print()
    print(table(shown))


if __name__ == "__main__":
    main()
