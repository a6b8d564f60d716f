"""Stability benchmark (issue 3): our stability pipeline against the paper's baselines, neuron by neuron.

Every method runs through ``PassManager`` on the same network and domain (uniform samples and corners of
the box, seed 0), and its verdicts are read from the merged state (``Stability.state(net)`` of the run's
``onnxcomp.stability.Stability`` annotation), so all methods are compared the same way:

=============  ==============================  ================================================
method         passes                          options
=============  ==============================  ================================================
stable         sample, bounds, falsify, milp   stability_method=auto (split for <= 8 inputs, ISA)
isa            sample, bounds, falsify, milp   stability_method=isa
split          sample, bounds, falsify, milp   stability_method=split (input branch and bound)
feasibility    sample, bounds, falsify, milp   stability_method=feasibility (per-side proofs, layer by layer)
plain-isa      sample, milp                    stability_method=isa, bounds_method=interval
per-neuron     sample, milp                    stability_method=per-neuron, bounds_method=interval
=============  ==============================  ================================================

``stable`` and ``isa`` run with SCIP and with Gurobi (``solver`` option; the size-limited licence admits
models up to 2000 variables/constraints, larger ones fall back to SCIP and the row says so), the baselines
with SCIP.  ``split`` (bisection of the input box) runs only on inputs of at most 8 dimensions, the rule
``auto`` uses (``--all-splits`` runs it everywhere; on 784 inputs it can only hit the time limit).  Each run
is a child process (a crash or a hang cannot stop the bench) with the MILP time
limit ``--time-limit`` (the child is killed at 2x + 120 s).  A run that leaves undecided neurons is
reported with their number and is not "finished".

Agreement check, per neuron (verdicts I = stably inactive, A = stably active, Z = both, i.e. y = 0 on the
whole domain, U = unstable, ? = undecided): two finished runs of the same model and domain must not
contradict each other on any neuron, otherwise the bench prints every disagreeing neuron with both
verdicts and how they were proven and exits 1.  Neurons decided by two runs of which one did not finish
are compared too (exit 1 as well): a proof contradicted by a witness is a soundness bug whether or not the
other run completed.  See ``disagreements`` for what counts as a contradiction.

Targets (reported, never asserted): ``stable`` >= 100x faster than ``per-neuron`` (median over the set), the
same stable sets; on mnist_2x100_l1 ``stable`` in the range of the paper's Gurobi ISA (~3.5 s).

Usage: python bench/stability.py [--quick] [--time-limit S] [--models a,b] [--methods m1,m2] [--jobs N]
                                 [--results FILE.jsonl] [--report-only] [--out bench/out]
``--scale [...]`` runs the end-to-end scale table instead (``bench/scale.py``: whole-command wall time against
``--time-limit``, undecided neurons, stage shares, ``--jobs 1`` vs all cores, undecided over time).
Results accumulate in a JSON-lines file (one line per run), so several invocations (e.g. models run in the
background) can be reported together with ``--report-only``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT, SPECS, print_table, pyplot, write_csv  # noqa: E402

from onnxcomp.pipeline import Context, PassManager  # noqa: E402
from onnxcomp.sampling import ActivationStats  # noqa: E402
from onnxcomp.stability import DomainBounds, Stability  # noqa: E402
from onnxcomp.stability.by_bounds import domain_bounds  # noqa: E402
from onnxcomp.stability.schedule import SPLIT_MAX_DIMS  # noqa: E402
from onnxcomp.timing import Deadline  # noqa: E402

OURS = ["sample", "bounds", "falsify", "milp"]
BASE = ["sample", "milp"]
METHODS = {
    "stable": (OURS, {"stability_method": "auto"}),
    "isa": (OURS, {"stability_method": "isa"}),
    "split": (OURS, {"stability_method": "split"}),
    "feasibility": (OURS, {"stability_method": "feasibility"}),
    "plain-isa": (BASE, {"stability_method": "isa", "bounds_method": "interval"}),
    "per-neuron": (BASE, {"stability_method": "per-neuron", "bounds_method": "interval"}),
}
# (method, solver) pairs in run order: ours with both solvers, the baselines with the open one
RUNS = [("stable", "scip"), ("stable", "gurobi"), ("isa", "scip"), ("isa", "gurobi"), ("split", "scip"),
        ("feasibility", "scip"), ("plain-isa", "scip"), ("per-neuron", "scip")]

QUICK_CASES = [("digits_2x32_l1", "0:1"), ("digits_2x32", "0:1"), ("tll_n2_N8", "property_N8_0"),
               ("acasxu_1_1", "prop_1")]
FULL_CASES = [("digits_2x100_l1", "0:1"), ("digits_2x100", "0:1"), ("mnist_2x100_l1", "0:1"),
              ("mnist_2x100", "0:1"), ("acasxu_1_1", "prop_1"), ("acasxu_1_1", "prop_3"),
              ("mnistfc_256x2", "prop_0_0.03"), ("mnistfc_256x2", "0:1"), ("tll_n2_N8", "property_N8_0"),
              ("digits_2x32_l1", "0:1"), ("digits_2x32", "0:1"), ("digits_3x48_l1", "0:1"),
              ("mnist_2x200_l1", "0:1"), ("mnist_3x100_l1", "0:1")]
VERDICTS = {"inactive": "I", "active": "A", "unstable": "U", "undecided": "?"}
COLUMNS = ["model", "domain", "method", "solver", "seconds", "milp_seconds", "stably_inactive", "stably_active",
           "unstable", "undecided", "finished", "status", "note"]


# ---- one run (in a child process) ---------------------------------------------------------------------
def verdicts(state, net) -> list[str]:
    """Per hidden ReLU layer, one letter per neuron (original order): I, A, Z (proven both: y = 0 on the
    whole domain), U or ?."""
    out = []
    for k, layer in enumerate(net.layers[:-1]):
        if not layer.is_relu:
            continue
        inact, act = state.proven_inactive[k], state.proven_active[k]
        unst = state.seen_active[k] & state.seen_inactive[k]
        letters = np.where(inact & act, "Z", np.where(inact, "I", np.where(act, "A", np.where(unst, "U", "?"))))
        out.append("".join(letters))
    return out


def run_one(model: str, domain: str, method: str, solver: str, time_limit: float) -> dict:
    """Run one method on one model/domain in this process; the record the parent stores.

    The passes before ``milp`` run without a time limit, ``milp`` within ``time_limit`` seconds (the MILP
    time limit).  The baselines run no ``bounds`` pass: ``milp`` gets only the domain's bounds (by
    ``bounds_method``) as its big-M constants, and no certificate from them."""
    spec = SPECS[model]
    _, net = spec.load()
    box = spec.box(domain, net)
    passes, options = METHODS[method]
    options = dict(options, solver=solver)
    bounds_method = options.pop("bounds_method", "crown") if "bounds" not in passes else None
    ctx = Context(box=box, seed=0, device="cpu", options=options)
    start = time.perf_counter()
    PassManager().run(net, passes[:-1], ctx)
    if bounds_method is not None:
        ctx.annotations[DomainBounds] = domain_bounds(net, box, bounds_method)
        ctx.annotations[Stability] = Stability(net.fingerprint())
    ctx.deadline = Deadline(time_limit)
    PassManager().run(net, passes[-1:], ctx)
    seconds = time.perf_counter() - start
    state = Stability.start(net, ctx.get(Stability), ctx.get(ActivationStats)).state(net)
    counts = state.counts(net)
    milp = next((e for e in ctx.log if e["name"] == "milp"), {})
    hidden = [k for k, layer in enumerate(net.layers[:-1]) if layer.is_relu]
    proofs = ["".join("e" if (p and e > 0) else (p[:1] or "-") for p, e in zip(state.proof[k], state.epsilon[k]))
              for k in hidden]
    notes = [milp.get("solver_note", "")] + [w for w in ctx.warnings if "solver" not in w.lower()]
    if milp.get("ambiguous"):
        notes.append(f"{len(milp['ambiguous'])} ambiguous (claimed flips a forward pass did not confirm)")
    return {
        "model": model, "domain": domain, "method": method, "solver": solver,
        "solver_used": milp.get("solver") or "", "seconds": round(seconds, 3),
        "pass_seconds": {e["name"]: e.get("seconds") for e in ctx.log},
        "milp_seconds": milp.get("seconds"), "status": str(milp.get("status", "")),
        "time_limit": time_limit, **counts, "finished": counts["undecided"] == 0,
        "verdicts": verdicts(state, net), "proofs": proofs, "layers": hidden,
        "conflicts": [list(c) for c in state.conflicts], "note": "; ".join(n for n in notes if n),
        "ambiguous": milp.get("ambiguous", []),
        "split_complete": milp.get("split_complete"),
    }


def child(args) -> int:
    rec = run_one(args.one[0], args.one[1], args.one[2], args.one[3], args.time_limit)
    print("RESULT " + json.dumps(rec))
    return 0


def spawn(model: str, domain: str, method: str, solver: str, time_limit: float) -> dict:
    """Run one case in a child process with a hard timeout; a failure becomes a record too."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", model, domain, method, solver,
           "--time-limit", str(time_limit)]
    base = {"model": model, "domain": domain, "method": method, "solver": solver, "time_limit": time_limit,
            "finished": False, "verdicts": [], "proofs": []}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * time_limit + 120)
    except subprocess.TimeoutExpired:
        return dict(base, status="killed", seconds=round(time.perf_counter() - t0, 1),
                    note=f"child killed after {2 * time_limit + 120:.0f} s")
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return dict(base, status=f"crashed (exit {proc.returncode})", seconds=round(time.perf_counter() - t0, 1),
                note=err[:300])


# ---- agreement ------------------------------------------------------------------------------------------
CERTIFIED = set("IAZ")
# verdict pairs that can both be right: a neuron that is 0 on the whole domain is stably inactive and
# stably active at once, and a run may have proven only one of the two
COMPATIBLE = {frozenset("IZ"), frozenset("AZ")}


def dense_range(model: str, domain: str, layer: int, neuron: int, n: int = 20000) -> tuple[float, float]:
    """(min, max) of one pre-activation over uniform samples and corners of the domain (float64)."""
    spec = SPECS[model]
    _, net = spec.load()
    box = spec.box(domain, net)
    rng = np.random.default_rng(12345)
    x = np.concatenate([box.sample(n, rng), box.corners(4096, rng), ((box.lo + box.hi) / 2)[None, :]])
    _, pres = net.forward(x, preactivations=True)
    y = pres[layer][:, neuron]
    return float(y.min()), float(y.max())


def disagreements(records: list[dict]) -> list[dict]:
    """Every neuron on which two runs of the same model/domain give contradicting definite verdicts.

    A certificate (I, A, Z) against a witness of both signs (U) is a contradiction.  I against A can only
    both hold when the pre-activation is 0 on the whole domain: a dense float64 forward pass decides it
    (a value above 1e-9 refutes I, below -1e-9 refutes A); pairs it cannot refute are not listed.
    """
    found = []
    groups: dict = {}
    for r in records:
        if r.get("verdicts"):
            groups.setdefault((r["model"], r["domain"]), []).append(r)
    for (model, domain), runs in groups.items():
        for i, a in enumerate(runs):
            for b in runs[i + 1:]:
                for li, (va, vb) in enumerate(zip(a["verdicts"], b["verdicts"])):
                    for n, (x, y) in enumerate(zip(va, vb)):
                        if x == y or "?" in (x, y) or frozenset((x, y)) in COMPATIBLE:
                            continue
                        why = "certificate vs witness"
                        if x in CERTIFIED and y in CERTIFIED:
                            lo, hi = dense_range(model, domain, a["layers"][li], n)
                            refuted = (hi > 1e-9 and "I" in (x, y)) or (lo < -1e-9 and "A" in (x, y))
                            if not refuted:
                                continue
                            why = f"I vs A; dense samples give y in [{lo:.3g}, {hi:.3g}]"
                        found.append({
                            "model": model, "domain": domain, "layer": a["layers"][li], "neuron": n,
                            "run_a": f"{a['method']}/{a['solver']}", "verdict_a": x,
                            "proof_a": a["proofs"][li][n], "run_b": f"{b['method']}/{b['solver']}",
                            "verdict_b": y, "proof_b": b["proofs"][li][n],
                            "both_finished": bool(a["finished"] and b["finished"]), "why": why,
                        })
    return found


# ---- report ---------------------------------------------------------------------------------------------
def table_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        solver = r["solver"] if r["method"] not in ("split",) else "-"
        if r["method"] != "split" and r.get("solver_used") and r["solver_used"] != r["solver"]:
            solver = f"{r['solver']}->{r['solver_used']}"
        rows.append({**{c: r.get(c, "") for c in COLUMNS}, "solver": solver,
                     "milp_seconds": (r.get("pass_seconds") or {}).get("milp", "")})
    return rows


def summary(records: list[dict]) -> list[str]:
    lines = []
    by_case: dict = {}
    for r in records:
        by_case.setdefault((r["model"], r["domain"]), {})[(r["method"], r["solver"])] = r
    speedups = []
    for (model, domain), runs in by_case.items():
        ours, base = runs.get(("stable", "scip")), runs.get(("per-neuron", "scip"))
        if ours and base and ours.get("finished") and "seconds" in base:
            s = base["seconds"] / max(ours["seconds"], 1e-9)
            speedups.append(s)
            lines.append(f"  {model} {domain}: per-neuron/stable = {s:,.1f}x"
                         + ("" if base.get("finished") else " (lower bound: per-neuron did not finish)"))
    if speedups:
        bounded = sum("lower bound" in line for line in lines)
        lines.insert(0, f"stable (SCIP) vs per-neuron (SCIP): median speedup {'>= ' if bounded else ''}"
                        f"{np.median(speedups):,.1f}x over {len(speedups)} cases (target >= 100x; per-neuron hit "
                        f"the time limit in {bounded} of them, so those speedups are lower bounds)")
    for solver in ("scip", "gurobi"):
        r = by_case.get(("mnist_2x100_l1", "0:1"), {}).get(("stable", solver))
        if r:
            lines.append(f"mnist_2x100_l1 0:1 stable/{solver}: {r['seconds']:.1f} s "
                         f"({'finished' if r['finished'] else str(r.get('undecided')) + ' undecided'}; "
                         f"paper's Gurobi ISA ~3.5 s)")
    return lines


def plot(records: list[dict], path: Path) -> None:
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cases = list(dict.fromkeys(f"{r['model']}\n{r['domain']}" for r in records))
    runs = [f"{m}/{s}" if m != "split" else m for m, s in RUNS]
    runs = [k for k in runs if any((f"{r['method']}/{r['solver']}" if r["method"] != "split" else r["method"]) == k
                                   for r in records)]
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(cases)), 5))
    width = 0.8 / max(len(runs), 1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, key in enumerate(runs):
        color = colors[j % len(colors)]
        for i, case in enumerate(cases):
            for r in records:
                k = f"{r['method']}/{r['solver']}" if r["method"] != "split" else r["method"]
                if k != key or f"{r['model']}\n{r['domain']}" != case or not r.get("seconds"):
                    continue
                x = i + (j - (len(runs) - 1) / 2) * width
                if "verdicts" in r and not r["verdicts"]:  # crashed or killed: no verdicts
                    ax.plot([x], [max(r["seconds"], 1e-2)], "x", color="red", ms=8)
                    continue
                ax.bar([x], [max(r["seconds"], 1e-2)], width, color=color,
                       hatch=None if r.get("finished") else "//", edgecolor="k" if not r.get("finished") else color)
    handles = [Patch(color=colors[j % len(colors)], label=key) for j, key in enumerate(runs)]
    handles += [Patch(facecolor="white", edgecolor="k", hatch="//", label="undecided neurons left"),
                Line2D([], [], marker="x", color="red", ls="", label="crashed / killed")]
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("seconds (log)")
    ax.set_title("ReLU stability over the input domain: time per method")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    latest: dict = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            latest[(r["model"], r["domain"], r["method"], r["solver"])] = r  # a re-run replaces the old one
    return list(latest.values())


def report(records: list[dict], out: Path, stem: str) -> int:
    order = {(m, d): i for i, (m, d) in enumerate(FULL_CASES + QUICK_CASES)}
    run_order = {k: i for i, k in enumerate(RUNS)}
    records = sorted(records, key=lambda r: (order.get((r["model"], r["domain"]), 99), r["model"], r["domain"],
                                             run_order.get((r["method"], r["solver"]), 99)))
    rows = table_rows(records)
    print_table(rows, COLUMNS, "ReLU stability: seconds and verdict counts per method")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{stem}.csv", rows, COLUMNS)
    plot(records, out / f"{stem}.png")
    for line in summary(records):
        print(line)
    conflicts = [r for r in records if r.get("conflicts")]
    for r in conflicts:
        print(f"note: {r['model']} {r['domain']} {r['method']}/{r['solver']}: certificate contradicted by a witness "
              f"within the run (kept as unstable): {r['conflicts']}")
    bad = disagreements(records)
    print(f"wrote {out / (stem + '.csv')}, {out / (stem + '.png')}")
    (out / f"{stem}_disagreements.csv").unlink(missing_ok=True)  # never leave one from an earlier report
    if bad:
        write_csv(out / f"{stem}_disagreements.csv", bad, list(bad[0]))
        print_table(bad[:50], list(bad[0]), f"DISAGREEMENTS ({len(bad)} neurons; proof letters: b=bounds, "
                    "s=split, m=milp exact, e=certificate with epsilon margin, -=witness/none)")
        finished = sum(d["both_finished"] for d in bad)
        print(f"FAILED: {len(bad)} neuron verdicts disagree between runs ({finished} between two finished runs)",
              file=sys.stderr)
        return 1
    n_fin = sum(bool(r.get("finished")) for r in records)
    print(f"agreement: no neuron verdict differs between any two runs ({n_fin} finished runs of {len(records)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--scale" in argv:  # the end-to-end scale table (bench/scale.py)
        import scale

        return scale.main([a for a in argv if a != "--scale"])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small models, 60 s time limit")
    ap.add_argument("--time-limit", type=float, default=None, help="MILP time limit per run (default 300, quick 60)")
    ap.add_argument("--models", default="", help="comma-separated model[:domain] (default: the quick/full set)")
    ap.add_argument("--methods", default="", help="comma-separated method/solver, e.g. stable/scip,split")
    ap.add_argument("--all-splits", action="store_true",
                    help=f"also run 'split' on inputs of more than {SPLIT_MAX_DIMS} dimensions (it cannot finish there)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (timings are fairer with 1)")
    ap.add_argument("--results", type=Path, default=None, help="JSON-lines file the runs are appended to")
    ap.add_argument("--report-only", action="store_true", help="only report what --results holds")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--one", nargs=4, metavar=("MODEL", "DOMAIN", "METHOD", "SOLVER"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.time_limit is None:
        args.time_limit = 60.0 if args.quick else 300.0
    if args.one:
        return child(args)
    stem = "stability_quick" if args.quick else "stability"
    results = args.results or (args.out / f"{stem}.jsonl")
    if not args.report_only:
        cases = QUICK_CASES if args.quick else FULL_CASES
        if args.models:
            cases = []
            for item in args.models.split(","):
                name, _, dom = item.partition(":")
                doms = [dom] if dom else list(SPECS[name].domains)
                cases += [(name, d) for d in doms]
        runs = RUNS
        if args.methods:
            wanted = [m.split("/") for m in args.methods.split(",")]
            runs = [(m[0], m[1] if len(m) > 1 else "scip") for m in wanted]
        todo = [(m, d, meth, s) for m, d in cases for meth, s in runs
                if meth != "split" or args.all_splits or SPECS[m].load()[1].input_size <= SPLIT_MAX_DIMS]
        results.parent.mkdir(parents=True, exist_ok=True)
        print(f"{len(todo)} runs, time limit {args.time_limit:g} s each, results -> {results} "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)

        def go(item):
            rec = spawn(*item, args.time_limit)
            with open(results, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(f"  {item[0]:16s} {item[1]:14s} {item[2]:10s} {item[3]:6s} {rec.get('seconds', 0):8.1f} s  "
                  f"I={rec.get('stably_inactive', '-')} A={rec.get('stably_active', '-')} "
                  f"U={rec.get('unstable', '-')} ?={rec.get('undecided', '-')} {rec.get('status', '')} "
                  f"{rec.get('note', '')[:80]}", flush=True)
            return rec

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(go, todo))
    return report(load_records(results), args.out, stem)


if __name__ == "__main__":
    sys.exit(main())
