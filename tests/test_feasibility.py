"""``feasibility``: per-side feasibility MILPs (SCIP, HiGHS) and branch and bound on ReLU states settle
neuron sides soundly.  On random networks a neuron ``settle`` proves stable is never seen flipping on
samples (exact certificates: never beyond rounding; epsilon certificates: never reaching ``eps``), every
witness is an input of the box whose float64 forward pass shows the state, and the tightened bounds
contain every sampled pre-activation.  Both search methods fire on a neuron the bounds cannot settle;
solver failures, time limits and unconfirmed solver points prove nothing."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import random_network
from onnxcomp.stability import feasibility as F
from onnxcomp.bounds import alpha_crown_bounds
from onnxcomp.ir import Box

random_net = partial(random_network, bias_scale=0.5, fan_in_scaled=True)


def samples(lo, hi, rng, n=6000):
    box = Box(lo, hi)
    return np.vstack([box.sample(n, rng), box.corners(512, rng), ((lo + hi) / 2)[None, :]])


def check_settlement(net, lo, hi, st_, rng) -> None:
    """Every claim of ``st_`` against a float64 forward pass of many points of the box."""
    _, pres = net.forward(samples(lo, hi, rng), preactivations=True)
    eps = F.epsilons(net, lo, hi)
    hidden = [k for k in range(len(net.layers) - 1) if net.layers[k].is_relu]
    for k in hidden:
        y = pres[k]
        scale = 1e-9 * (1 + np.abs(y).max())
        for i in np.flatnonzero(st_.stably_inactive[k]):
            limit = eps[k][i] if st_.epsilon[k][i] > 0 else scale
            assert y[:, i].max() < limit, f"layer {k} neuron {i} ({st_.certificate[k][i]}) seen active"
        for i in np.flatnonzero(st_.stably_active[k]):
            limit = eps[k][i] if st_.epsilon[k][i] > 0 else scale
            assert y[:, i].min() > -limit, f"layer {k} neuron {i} ({st_.certificate[k][i]}) seen inactive"
        # bounds contain every sample (MILP-derived ones up to their margin, by construction >= eps)
        assert np.all(y <= st_.upper[k] + scale) and np.all(y >= st_.lower[k] - scale), f"layer {k} bounds"
        # every neuron is proven, unstable, or undecided, and certificates carry a kind
        proven = st_.stably_inactive[k] | st_.stably_active[k]
        unstable = st_.seen_active[k] & st_.seen_inactive[k]
        assert not (proven & unstable).any()
        np.testing.assert_array_equal(st_.undecided[k], ~proven & ~unstable)
        assert all(st_.certificate[k][i] for i in np.flatnonzero(proven))
    floor = [F.WITNESS_FLOAT64 * e for e in eps]
    for (k, i, side), x in st_.witnesses.items():
        assert np.all(x >= lo) and np.all(x <= hi)
        y = net.forward(x[None, :], preactivations=True)[1][k][0, i]
        assert (y > floor[k][i]) if side == F.ACTIVE else (y < -floor[k][i])


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 100_000), n_in=st.integers(2, 4), widths=st.lists(st.integers(3, 8), min_size=2, max_size=3),
       method=st.sampled_from(["bab", "milp-highs", "milp-scip"]), shift=st.sampled_from([0.0, -0.3]))
def test_settle_claims_hold_on_samples(seed, n_in, widths, method, shift):
    net = random_net(seed, n_in, widths, shift=shift)
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1, 0, n_in)
    hi = lo + rng.uniform(0.2, 1.5, n_in)
    name, _, solver = method.partition("-")
    st_ = F.settle(net, lo, hi, time_limit=20, schedule=((name, 0.5, 3.0),), solver=solver or "scip",
                   witness_seconds=0.5, second_round=False, seed=seed)
    check_settlement(net, lo, hi, st_, rng)


def hard_case():
    """A random network and box where some side is open after alpha-CROWN and witnesses (found by seed)."""
    for seed in range(40):
        net = random_net(seed, 3, [8, 8, 8], shift=-0.2)
        lo, hi = -np.ones(3), np.ones(3)
        st_ = F.settle(net, lo, hi, time_limit=5, schedule=(), witness_seconds=0.5, second_round=False)
        open_ = [(k, i) for k in (1, 2) for i in np.flatnonzero(st_.undecided[k])]
        if len(open_) >= 2:
            return net, lo, hi, st_
    raise AssertionError("no hard case found")


@pytest.mark.parametrize("method,solver", [("bab", "scip"), ("milp", "scip"), ("milp", "highs")])
def test_each_method_settles_sides_the_bounds_leave_open(method, solver):
    net, lo, hi, before = hard_case()
    after = F.settle(net, lo, hi, time_limit=60, schedule=((method, 5.0, 20.0),), solver=solver, witness_seconds=0.5)
    check_settlement(net, lo, hi, after, np.random.default_rng(0))
    n_before = sum(int(before.undecided[k].sum()) for k in range(len(net.layers) - 1))
    n_after = sum(int(after.undecided[k].sum()) for k in range(len(net.layers) - 1))
    assert n_after < n_before
    kinds = {c for k in range(len(net.layers) - 1) for c in after.certificate[k] if c}
    expected = {"bab", "bab-epsilon"} if method == "bab" else {"milp-infeasible", "bounds-epsilon"}
    assert kinds & expected or any(r.verdict == "witness" for r in after.sides)
    assert all(r.solver == ("bab" if method == "bab" else solver) for r in after.sides)


def unit_for(net, lo, hi, layer, tasks, **kw) -> F.SideUnit:
    a = alpha_crown_bounds(net, lo, hi, iterations=10)
    return F.SideUnit([l.weight for l in net.layers[:layer + 1]], [l.bias for l in net.layers[:layer + 1]],
                      [l.is_relu for l in net.layers[:layer + 1]], lo, hi, [b[0] for b in a.lower[:layer + 1]],
                      [b[0] for b in a.upper[:layer + 1]], layer, tasks, 10.0, **kw)


def test_side_results_agree_across_methods_and_with_samples():
    net, lo, hi, before = hard_case()
    eps = F.epsilons(net, lo, hi)
    _, pres = net.forward(samples(lo, hi, np.random.default_rng(1)), preactivations=True)
    for k in (1, 2):
        tasks = [F.SideTask(int(i), side, float(eps[k][i]), F.WITNESS_FLOAT64 * float(eps[k][i]))
                 for i in np.flatnonzero(before.undecided[k]) for side in (F.ACTIVE, F.INACTIVE)
                 if not (before.seen_active[k][i] if side == F.ACTIVE else before.seen_inactive[k][i])]
        if not tasks:
            continue
        verdicts = {}
        for method, solver in (("bab", "scip"), ("milp", "scip"), ("milp", "highs")):
            for r in F.solve_sides(unit_for(net, lo, hi, k, tasks, solver=solver, method=method)):
                y = pres[k][:, r.neuron] * (1 if r.side == F.ACTIVE else -1)
                t = next(t for t in tasks if (t.neuron, t.side) == (r.neuron, r.side))
                if r.verdict == "proven":
                    assert y.max() < t.eps
                if r.verdict == "witness":
                    yw = net.forward(r.witness[None, :], preactivations=True)[1][k][0, r.neuron]
                    assert yw * (1 if r.side == F.ACTIVE else -1) > t.floor
                if r.verdict != "undecided":
                    verdicts.setdefault((r.neuron, r.side), set()).add(r.verdict)
        assert all(len(v) == 1 for v in verdicts.values()), verdicts  # no method contradicts another


def test_solver_failures_prove_nothing(monkeypatch):
    net, lo, hi, before = hard_case()
    k = next(k for k in (1, 2) if before.undecided[k].any())
    i = int(np.flatnonzero(before.undecided[k])[0])
    task = F.SideTask(i, F.ACTIVE if not before.seen_active[k][i] else F.INACTIVE, 1e-5, 1e-9)
    bad = F.solve_sides(unit_for(net, lo, hi, k, [task], solver="bogus"))[0]
    assert bad.verdict == "undecided" and bad.status.startswith("error")

    from onnxcomp.milp import highs

    def boom(self, *a, **kw):
        raise RuntimeError("solver crashed")

    monkeypatch.setattr(highs.HighsProblem, "solve", boom)
    crashed = F.solve_sides(unit_for(net, lo, hi, k, [task], solver="highs"))[0]
    assert crashed.verdict == "undecided" and "crashed" in crashed.status
    # a time limit too short to decide anything leaves the side undecided, with no certificate
    for method in ("bab", "milp"):
        u = unit_for(net, lo, hi, k, [task], solver="scip", method=method)
        u.time_limit = 1e-4
        r = F.solve_sides(u)[0]
        assert r.verdict != "proven" or r.certificate  # a proof here would need its certificate
        if r.verdict == "undecided":
            assert not r.certificate


def test_unconfirmed_solver_points_are_not_witnesses():
    # with every ReLU of the prefix relaxed to its triangle (no binaries) the LP is feasible for y >= eps
    # on neurons that are stably inactive; its points fail the forward pass and must not count
    found = False
    for seed in range(30):
        net = random_net(seed, 3, [8, 8], shift=-0.3)
        lo, hi = -np.ones(3), np.ones(3)
        a = alpha_crown_bounds(net, lo, hi, iterations=10)
        _, pres = net.forward(samples(lo, hi, np.random.default_rng(seed)), preactivations=True)
        eps = F.epsilons(net, lo, hi)
        cand = [i for i in range(8) if a.upper[1][0, i] > 0.05 and pres[1][:, i].max() < -0.05]
        if not cand:
            continue
        tasks = [F.SideTask(i, F.ACTIVE, float(eps[1][i]), F.WITNESS_FLOAT64 * float(eps[1][i])) for i in cand]
        u = unit_for(net, lo, hi, 1, tasks, solver="highs", binary=[np.zeros(8, bool)])
        for r in F.solve_sides(u):
            assert r.verdict != "witness"
            if r.candidates:
                found = True
                assert r.verdict == "undecided"
    assert found


def test_bab_proof_on_epsilon_bounds_carries_the_margin():
    net, lo, hi, before = hard_case()
    eps = F.epsilons(net, lo, hi)
    for exact in (True, False):
        for k in (1, 2):
            tasks = [F.SideTask(int(i), F.ACTIVE, float(eps[k][i]), F.WITNESS_FLOAT64 * float(eps[k][i]))
                     for i in np.flatnonzero(before.undecided[k] & ~before.seen_active[k])]
            for r in F.solve_sides(unit_for(net, lo, hi, k, tasks, method="bab", bounds_exact=exact)):
                if r.verdict == "proven" and not exact:
                    assert r.epsilon > 0 and r.certificate == "bab-epsilon"
                if r.verdict == "proven" and r.certificate == "bab":
                    assert r.epsilon == 0 and r.bound <= 0


def test_bab_optimize_mode_gives_sound_tighter_bounds():
    net = random_net(7, 3, [10, 10])
    lo, hi = -np.ones(3), np.ones(3)
    u = unit_for(net, lo, hi, 1, [])
    _, pres = net.forward(samples(lo, hi, np.random.default_rng(2)), preactivations=True)
    tighter = 0
    for i in range(10):
        for side, d in ((F.ACTIVE, 1.0), (F.INACTIVE, -1.0)):
            r = F.bab_side(u, F.SideTask(i, side, 1e-5, 1e-9), 1.0, optimize=True)
            assert r.verdict == "undecided" and r.bound is not None
            if d > 0:
                assert pres[1][:, i].max() <= r.bound
                tighter += r.bound < u.upper[1][i] - 1e-6
            else:
                assert pres[1][:, i].min() >= r.bound
                tighter += r.bound > u.lower[1][i] + 1e-6
    assert tighter > 0


def test_find_witnesses_returns_real_witnesses():
    net = random_net(3, 4, [12, 12, 12])
    lo, hi = -np.ones(4), np.ones(4)
    eps = F.epsilons(net, lo, hi)
    floor = [F.WITNESS_FLOAT64 * e for e in eps]
    targets = [(k, i, s) for k in range(3) for i in range(12) for s in (F.ACTIVE, F.INACTIVE)]
    sa, si, where = F.find_witnesses(net, lo, hi, targets, floor, samples=64, steps=10)
    assert where
    for (k, i, side), x in where.items():
        assert (sa if side == F.ACTIVE else si)[k][i]
        assert np.all(x >= lo) and np.all(x <= hi)
        y = net.forward(x[None, :], preactivations=True)[1][k][0, i]
        assert (y > floor[k][i]) if side == F.ACTIVE else (y < -floor[k][i])


@pytest.mark.parametrize("method", ["bab", "milp"])
def test_settle_on_a_worker_pool_reaches_the_same_verdicts_as_serially(method):
    """Sides solved two at a time in worker processes (waves of two units) settle the same neurons the same
    way as one by one in this process."""
    from onnxcomp.workers import Workers

    net, lo, hi, _ = hard_case()
    kw = dict(time_limit=60, schedule=((method, 5.0, 5.0),), second_round=False, chunk=1, witness_seconds=0.5)
    serial = F.settle(net, lo, hi, **kw)
    with Workers(jobs=2) as workers:
        pooled = F.settle(net, lo, hi, parallel=workers.size, map_fn=workers.map, **kw)
    assert serial.counts()["undecided"] == pooled.counts()["undecided"] == 0
    assert len(serial.sides) >= 2 and len(pooled.sides) >= 2, "the solvers had work to do"
    for k in range(len(net.layers) - 1):
        np.testing.assert_array_equal(serial.stably_inactive[k], pooled.stably_inactive[k])
        np.testing.assert_array_equal(serial.stably_active[k], pooled.stably_active[k])
    check_settlement(net, lo, hi, pooled, np.random.default_rng(0))


def test_stage_trace_counts_undecided_neurons_of_the_whole_network():
    """Each stage records the undecided neurons of all layers after it (the bench plots them over time):
    never rising without a conflict, and the last one is the settlement's count."""
    net, lo, hi, _ = hard_case()
    st_ = F.settle(net, lo, hi, time_limit=30, witness_seconds=0.5)
    trace = [s["undecided_neurons"] for s in st_.stages]
    times = [s["at"] for s in st_.stages]
    assert times == sorted(times)
    assert not st_.conflicts and trace == sorted(trace, reverse=True), trace
    assert trace[-1] == st_.counts()["undecided"]


def test_a_probe_that_settles_nothing_in_its_first_wave_hands_the_layer_to_the_next_method():
    """A probe method (here the MILP, made to settle nothing: every unit comes back undecided, as from a
    solver that runs out of time) gets one wave per layer; the branch and bound after it then settles what
    it settles alone, and the stage trace says the probe was dropped."""
    net, lo, hi, _ = hard_case()
    dispatched: list = []

    def map_fn(fn, units):
        units = list(units)
        dispatched.extend((u.layer, u.method, len(u.tasks)) for u in units)
        return [[F.SideResult(u.layer, t.neuron, t.side, "undecided", status="time limit", solver=u.solver)
                 for t in u.tasks] if u.method == "milp" else fn(u) for u in units]

    kw = dict(time_limit=60, second_round=False, chunk=1, witness_seconds=0.5)
    probed = F.settle(net, lo, hi, schedule=(("milp", 1.0, 1.0, True), ("bab", 5.0, 5.0)), map_fn=map_fn, **kw)
    alone = F.settle(net, lo, hi, schedule=(("bab", 5.0, 5.0),), **kw)
    milp_layers = [k for k, m, _ in dispatched if m == "milp"]
    assert milp_layers and len(milp_layers) == len(set(milp_layers)), "one wave (one unit of one side) per layer"
    assert any(m == "bab" for _, m, _ in dispatched)
    assert all(s["dropped"] for s in probed.stages if s["stage"].startswith("milp"))
    assert probed.counts() == alone.counts()
    check_settlement(net, lo, hi, probed, np.random.default_rng(0))


def _every_side_ends(status: str):
    """A ``map_fn`` standing in for a solver whose every side ends undecided with ``status`` (proves nothing)."""
    def map_fn(fn, units):
        return [[F.SideResult(u.layer, t.neuron, t.side, "undecided", status=status, solver="bab") for t in u.tasks]
                for u in units]
    return map_fn


def test_sides_that_keep_running_out_of_time_get_later_rounds_with_a_doubled_floor_until_the_deadline():
    """Later rounds go on while some side of the last one ran out of time (here every side does: the
    solver stand-in never finishes), each with twice the per-side floor of the one before, and end by
    the deadline; sides settled by nothing stay undecided."""
    net, lo, hi, _ = hard_case()
    t0 = time.monotonic()
    st_ = F.settle(net, lo, hi, time_limit=4, schedule=(("bab", 0.1, 0.1),), final=("bab", 0.1),
                   map_fn=_every_side_ends("time limit"), witness_seconds=0.5, alpha_iterations=2)
    assert time.monotonic() - t0 < 4 + 2.0  # the last round starts a second before the deadline
    rounds = sorted({int(s["round"]) for s in st_.stages if "round" in s})
    assert rounds[:3] == [1, 2, 3], rounds
    for s in st_.stages:
        if s.get("round") in ("2", "3", "4"):  # the floor doubles (later ones are capped by the time left)
            assert s["per_side_limit"] >= round(0.1 * 2 ** (int(s["round"]) - 2), 2) - 0.01
    assert st_.counts()["undecided"] > 0 and not any(c == "bab" for k in st_.hidden for c in st_.certificate[k])


def test_later_rounds_stop_when_no_side_ran_out_of_time():
    """When every side of a round ended by itself (proven, witnessed, or stuck for another reason), more
    time per side would change nothing: settle returns long before its deadline."""
    net, lo, hi, _ = hard_case()
    t0 = time.monotonic()
    st_ = F.settle(net, lo, hi, time_limit=120, schedule=(("bab", 0.1, 0.1),), final=("bab", 0.1),
                   map_fn=_every_side_ends("memory limit"), witness_seconds=0.5)
    assert time.monotonic() - t0 < 60
    assert max(int(s["round"]) for s in st_.stages if "round" in s) == 2
