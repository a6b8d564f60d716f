"""The regions search (``onnxcomp.stability.regions``): exact linear regions of networks with at most two
inputs, its agreement with the per-neuron MILP baseline, ties at exactly 0, time limits, and the replay
of its claims."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import onnxcomp
from onnxcomp import certificate
from onnxcomp.ir import LINEAR, Box, Dense, Network
from onnxcomp.pipeline import Context, PassManager
from onnxcomp.reader import lower
from onnxcomp.replay import replay, reprove
from onnxcomp.stability import Stability
from onnxcomp.stability.by_bounds import domain_bounds
from onnxcomp.stability.common import ProofSetup
from onnxcomp.stability.regions import allowances, cut, explore, regions, supports, vertex_ranges
from onnxcomp.stability.state import empty_state, epsilons, witness_floor
from onnxcomp.timing import Deadline

from builders import random_network


def tied_network(seed: int, n_in: int, widths: list, shift: float = 0.0) -> Network:
    """A random MLP (hidden widths >= 2) whose layers also carry what two-level lattice networks are made
    of: after its own neurons, a duplicate of neuron 0 and a pass-through pair ``relu(y1), relu(-y1)``; the
    next layer's neuron 0 adds ``h0 - duplicate`` (0 in exact arithmetic) and two neurons of its own read
    ``h0 - duplicate`` (0 everywhere: a tie) and ``-relu(-y1)`` (at most 0, reached where ``y1 >= 0``)."""
    rng = np.random.default_rng(seed)
    base = random_network(rng, n_in, widths, 2, shift=shift)
    layers, width, extra = [], n_in, 0
    for layer in base.layers[:-1]:
        n = layer.n_out
        full = np.zeros((n, width + extra))
        full[:, :width] = layer.weight
        rows, bias = [full], [np.array(layer.bias)]
        rows.append(np.vstack([full[0], full[1], -full[1]]))
        bias.append(np.array([layer.bias[0], layer.bias[1], -layer.bias[1]]))
        if extra:  # columns width.. of the layer below: duplicate, relu(y1), relu(-y1)[, its two ties]
            full[0, 0] += 1.0
            full[0, width] -= 1.0
            ties = np.zeros((2, width + extra))
            ties[0, 0], ties[0, width], ties[1, width + 2] = 1.0, -1.0, -1.0
            rows.append(ties)
            bias.append(np.zeros(2))
        layers.append(Dense(np.vstack(rows), np.concatenate(bias), layer.activation))
        width, extra = n, 3 + (2 if extra else 0)
    out = np.hstack([np.array(base.layers[-1].weight), rng.normal(size=(2, extra))])
    layers.append(Dense(out, np.array(base.layers[-1].bias), LINEAR))
    return Network(tuple(layers), n_in)


def analyse(net: Network, box: Box, method: str, time_limit: float = 30.0, **options):
    ctx = Context(box=box, deadline=Deadline(time_limit), options={"stability_method": method, **options})
    PassManager().run(net, ["bounds", "milp"], ctx)
    entry = next(e for e in ctx.log if e["name"] == "milp")
    return ctx.get(Stability).state(net), entry


def decided(net: Network, state) -> list:
    """Per hidden neuron: inactive / active (removable as such) / unstable / undecided."""
    out = []
    for k in range(len(net.layers) - 1):
        if not net.layers[k].is_relu:
            continue
        for i in range(net.layers[k].n_out):
            if state.proven_inactive[k][i]:
                out.append("inactive")
            elif state.proven_active[k][i]:
                out.append("active")
            elif state.seen_active[k][i] and state.seen_inactive[k][i]:
                out.append("unstable")
            else:
                out.append("undecided")
    return out


def sampled(net: Network, box: Box, n: int = 40_000) -> list:
    rng = np.random.default_rng(0)
    x = np.vstack([box.sample(n, rng), box.corners(16, rng)])
    return net.forward(x, preactivations=True)[1]


def assert_proofs_hold(net: Network, box: Box, state, pres) -> None:
    """No proof is contradicted by a witness: a sampled pre-activation beyond rounding noise of 0 (a tie
    computes as +-1e-15 on either side)."""
    floor = witness_floor(epsilons(net, box.lo, box.hi))
    for k in range(len(net.layers) - 1):
        assert not np.any(state.proven_inactive[k] & (pres[k].max(axis=0) > floor[k])), k
        assert not np.any(state.proven_active[k] & (pres[k].min(axis=0) < -floor[k])), k


# ---- the polygon cut ----------------------------------------------------------------------------------
def area(verts: np.ndarray) -> float:
    x, y = verts[:, 0], verts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@settings(max_examples=40, deadline=None)
@given(a=st.floats(-3, 3), b=st.floats(-3, 3), c=st.floats(-2, 2))
def test_a_cut_splits_the_polygon_into_two_that_tile_it(a, b, c):
    square = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    s = square @ np.array([a, b]) + c
    assume(s.min() < 0 < s.max())  # the search cuts only along a line that crosses the piece
    left, right = cut(square, s)
    parts = [p for p in (left, right) if len(p) >= 3]
    assert sum(area(p) for p in parts) == pytest.approx(4.0, abs=1e-12)
    for part, sign in ((left, -1), (right, 1)):
        if len(part):
            assert np.all(sign * (part @ np.array([a, b]) + c) >= -1e-12)


# ---- exactness: agreement with the per-neuron baseline ------------------------------------------------
@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_in=st.integers(1, 2), widths=st.lists(st.integers(3, 6), min_size=2, max_size=3),
       shift=st.sampled_from([-0.5, 0.0, 0.5]), tied=st.booleans())
def test_regions_decide_every_neuron_as_the_per_neuron_milps_do(seed, n_in, widths, shift, tied):
    net = tied_network(seed, n_in, widths, shift) if tied else random_network(seed, n_in, widths, 2, shift=shift)
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1, 0, n_in)
    box = Box(lo, lo + rng.uniform(0.2, 1.5, n_in))
    state, entry = analyse(net, box, "regions")
    assert entry["undecided"] == 0 and entry.get("regions_complete", True)  # (none: the bounds settled all)
    assert_proofs_hold(net, box, state, sampled(net, box))
    reference, ref_entry = analyse(net, box, "per-neuron", solver="scip")
    if ref_entry["status"] == "complete":
        assert decided(net, state) == decided(net, reference)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_in=st.integers(1, 2), widths=st.lists(st.integers(2, 7), min_size=1, max_size=4),
       tied=st.booleans())
def test_both_computations_of_the_regions_agree_and_contain_every_sampled_value(seed, n_in, widths, tied):
    net = tied_network(seed, n_in, widths) if tied else random_network(seed, n_in, widths, 2)
    box = Box(-np.ones(n_in), np.ones(n_in))
    n = len(net.layers) - 1
    floor = witness_floor(epsilons(net, box.lo, box.hi))
    every = [np.full(layer.n_out, layer.is_relu) for layer in net.layers[:n]]
    none = [np.zeros(layer.n_out, bool) for layer in net.layers]
    found = explore(net, box.lo, box.hi, every, [m.copy() for m in every], floor[:n], none, none, Deadline(30))
    assert found.complete and found.finished == n - 1
    upper, lower = vertex_ranges(net, box.lo, box.hi, n, Deadline(30))
    _, allow = allowances(net, box.lo, box.hi)
    pres = sampled(net, box, 20_000)
    for k in range(n):
        # the search stops at the last layer with an open side; on the layers it finished both agree
        if np.isfinite(found.upper[k]).all():
            assert np.all(np.abs(found.upper[k] - upper[k]) <= allow[k])
            assert np.all(np.abs(found.lower[k] - lower[k]) <= allow[k])
        assert np.all(pres[k].max(axis=0) <= upper[k] + allow[k])
        assert np.all(pres[k].min(axis=0) >= lower[k] - allow[k])


# ---- ties at exactly 0, where the box split does not converge -----------------------------------------
def tie_case() -> tuple[Network, Box]:
    """a = b = relu(x1 - x2) (duplicates), c = relu(x2 - x1); next layer: a - b (0 everywhere), -c (at most
    0, reached on the half x2 <= x1), a + c - 0.5 (|x1 - x2| - 0.5: unstable)."""
    first = Dense(np.array([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]), np.zeros(3))
    second = Dense(np.array([[1.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 1.0]]), np.array([0.0, 0.0, -0.5]))
    out = Dense(np.ones((1, 3)), np.zeros(1), LINEAR)
    return Network((first, second, out), 2), Box(-np.ones(2), np.ones(2))


def test_regions_settle_ties_at_zero_that_the_box_split_leaves_open():
    net, box = tie_case()
    state, entry = analyse(net, box, "regions")
    assert entry["undecided"] == 0 and entry["regions_complete"]
    assert state.proven_inactive[1][:2].all()  # a - b and -c: stably inactive (0 reached, never above)
    assert state.seen_active[1][2] and state.seen_inactive[1][2]
    assert state.proof[1][0] in {"split", "split-epsilon"}  # (-c: the bounds show it within the margin)
    boxes, _ = analyse(net, box, "split", time_limit=2.0, split_leaf_binaries=0)
    assert not boxes.proven_inactive[1][0]  # the bounds of a - b never reach 0 on pieces across x1 = x2


def test_a_time_limit_proves_nothing_and_keeps_every_open_neuron():
    net, box = tie_case()
    floor = witness_floor(epsilons(net, box.lo, box.hi))
    every = [np.full(layer.n_out, True) for layer in net.layers[:2]]
    none = [np.zeros(layer.n_out, bool) for layer in net.layers]
    found = explore(net, box.lo, box.hi, every, [m.copy() for m in every], floor[:2], none, none, Deadline(0))
    assert not found.complete and found.finished == -1
    assert vertex_ranges(net, box.lo, box.hi, 2, Deadline(0)) == (None, None)
    bounds = domain_bounds(net, box)
    setup = ProofSetup(net, box.lo, box.hi, list(bounds.lower), list(bounds.upper), list(bounds.eps))
    entry: dict = {}
    found = regions(setup, empty_state(net), 0.0, entry)
    assert entry["regions_complete"] is False
    assert not any(p.any() for part in found.flatten() for p in (part.proven_inactive or []) + (part.proven_active or []))


def test_the_method_falls_back_to_split_beyond_two_inputs():
    net = random_network(3, 3, [4, 4], 1)
    assert not supports(net)
    ctx = Context(box=Box(-np.ones(3), np.ones(3)), deadline=Deadline(20), options={"stability_method": "regions"})
    PassManager().run(net, ["bounds", "milp"], ctx)
    entry = next(e for e in ctx.log if e["name"] == "milp")
    assert "split_boxes" in entry and "regions_pieces" not in entry
    assert any("split" in w for w in ctx.warnings)


# ---- replay -------------------------------------------------------------------------------------------
def test_replay_refuses_a_false_claim_on_the_regions_path():
    net, box = tie_case()
    claimed = empty_state(net)
    claimed.proven_inactive[1][2] = True  # |x1 - x2| - 0.5 is not stably inactive
    claimed.proof[1][2] = "split"
    st_, failed, _ = reprove(net, box, claimed, Deadline(20))
    assert not st_.proven_inactive[1][2] and [f["neuron"] for f in failed] == [2]


def test_tll_n8_is_decided_completely_and_its_certificate_replays(repo_root):
    path = repo_root / "models" / "external" / "tll" / "tll_n2_N8_instance_0_0.onnx"
    model = onnx.load(str(path))
    box = Box(-2 * np.ones(2), 2 * np.ones(2))
    result = onnxcomp.compress(model, "stable", domain=(box.lo, box.hi), samples=2000, time_limit=120)
    milp = next(e for e in result.report["passes"] if e["name"] == "milp")
    assert milp["undecided"] == 0 and milp["regions_complete"]
    out = result.model
    cert = certificate.decode({p.key: p.value for p in out.metadata_props}["onnxcomp.certificate"])
    ref, cand = lower(model), lower(out)
    checked = replay(ref, cand, box, cert, deadline=Deadline(120), tolerance=1e-3)
    assert checked.certified, checked.reason
    assert checked.reproven.get("replay-regions", 0) > 0
    pres = sampled(ref, box, 20_000)
    assert_proofs_hold(ref, box, certificate.claimed_state(ref, cert), pres)
