"""``verify --formal``: the certified bound on max |f1 - f2| over the box is sound (never below a difference
that sampling finds), tight for equivalent networks, and the differences it reports are real."""

from __future__ import annotations

import json
import subprocess
import sys

from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import random_network
from onnxcomp.formal import max_difference, milp_difference, split_difference
from onnxcomp.ir import LINEAR, RELU, Box, Dense, Network
from onnxcomp.pipeline import Context, PassManager, expand
from onnxcomp.writer import save_atomic, to_model

pytestmark = pytest.mark.slow  # end to end (subprocesses, solvers); `make test-fast` leaves these out


random_net = partial(random_network, bias_scale=0.5)


def perturbed(net: Network, scale: float, seed: int) -> Network:
    rng = np.random.default_rng(seed)
    first = net.layers[0]
    w = first.weight + scale * rng.normal(size=first.weight.shape)
    return net.with_layers((Dense(w, first.bias, first.activation),) + net.layers[1:])


def sampled_max_diff(a: Network, b: Network, box: Box, n: int = 20000) -> float:
    x = np.vstack([box.sample(n, np.random.default_rng(1)), box.corners(256, np.random.default_rng(2))])
    return float(np.abs(a.forward(x) - b.forward(x)).max())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_in=st.integers(1, 3), widths=st.lists(st.integers(2, 5), min_size=1, max_size=2),
       scale=st.sampled_from([0.0, 0.05, 0.5]))
def test_split_bound_is_never_below_a_sampled_difference(seed, n_in, widths, scale):
    net = random_net(seed, n_in, widths)
    other = perturbed(net, scale, seed + 1)
    box = Box(-np.ones(n_in), np.ones(n_in))
    res = split_difference(net, other, box, tolerance=1e-6, time_limit=20)
    seen = sampled_max_diff(net, other, box)
    assert res.certified_max_abs_diff >= seen - 1e-9
    assert res.found_max_abs_diff <= res.certified_max_abs_diff + 1e-9
    if scale == 0.0:
        assert res.certified_max_abs_diff <= 1e-6


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.0, 0.3]))
def test_milp_bound_is_sound_and_its_witness_is_real(seed, scale):
    net = random_net(seed, 10, [4, 3])
    other = perturbed(net, scale, seed + 1)
    box = Box(-np.ones(10), np.ones(10))
    res = milp_difference(net, other, box, time_limit=30, solver="scip")
    seen = sampled_max_diff(net, other, box, 5000)
    assert res.certified_max_abs_diff >= seen - 1e-6
    for e in res.per_output:  # every difference it reports is there at the input it gives
        for sense in ("max", "min"):
            part = e[sense]
            if part.get("input") is not None and part.get("found") is not None:
                x = np.asarray(part["input"])[None, :]
                assert box.contains(x).all()
                real = float((net.forward(x) - other.forward(x))[0, e["output"]])
                assert abs(real - part["found"]) <= 1e-9
    if scale == 0.0:  # the same network twice: 0, up to the margin the solver's feasibility tolerance leaves
        from onnxcomp.formal import _milp_margin

        margin = max(_milp_margin(net, other, box, j) for j in range(net.output_size))
        # (the dual bound itself may be off zero by the solver's tolerances, well below the margin)
        assert res.certified_max_abs_diff <= 2 * margin and res.complete


def test_folded_network_is_certified_equal_on_its_domain():
    """A network whose first layer has neurons that are stable on the box folds; the formal check of
    the folded network against the original closes at the tolerance."""
    rng = np.random.default_rng(3)
    w0 = np.vstack([rng.uniform(0.2, 1, size=(3, 2)), rng.normal(size=(3, 2))])
    b0 = np.concatenate([np.full(3, 0.5), np.zeros(3)])
    net = Network((Dense(w0, b0, RELU), Dense(rng.normal(size=(4, 6)), rng.normal(size=4), RELU),
                   Dense(rng.normal(size=(2, 4)), np.zeros(2), LINEAR)), 2)
    box = Box(np.zeros(2), np.ones(2))
    ctx = Context(box=box)
    folded = PassManager().run(net, expand("stable"), ctx)
    assert folded.params < net.params
    res = max_difference(net, folded, box, time_limit=30, tolerance=1e-6)
    assert res.complete and res.certified_max_abs_diff <= 1e-6


def test_cli_formal_passes_an_equivalent_pair_and_fails_a_changed_one(tmp_path):
    net = random_net(5, 2, [4, 4])
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    save_atomic(to_model(net), a)
    save_atomic(to_model(net), b)
    save_atomic(to_model(perturbed(net, 0.2, 9)), c)
    ok = subprocess.run([sys.executable, "-m", "onnxcomp", "verify", str(a), str(b), "--domain", "-1:1", "--formal",
                         "--report", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["formal"]["passed"] and report["formal"]["certified_max_abs_diff"] <= report["formal"]["tolerance"]
    bad = subprocess.run([sys.executable, "-m", "onnxcomp", "verify", str(a), str(c), "--domain", "-1:1", "--formal"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "exists" in bad.stdout


@pytest.mark.parametrize("n_in", [4, 12])  # input split (<= 8 inputs) and per-output MILPs (more)
def test_the_time_limit_holds_and_an_unfinished_search_certifies_nothing_false(n_in):
    """A copy with every weight perturbed, checked at a tolerance just above the largest difference sampling
    finds: the search cannot settle that in 2 s; it stops near the limit, says it did not complete, and
    its bound still covers every sampled difference."""
    import time

    rng = np.random.default_rng(n_in)
    a = random_net(rng, n_in, [40, 40, 40], 3)
    b = a.with_layers(tuple(Dense(l.weight * (1 + 1e-3 * rng.normal(size=l.weight.shape)), l.bias, l.activation)
                            for l in a.layers))
    box = Box(-np.ones(n_in), np.ones(n_in))
    sampled = sampled_max_diff(a, b, box)
    t0 = time.monotonic()
    res = max_difference(a, b, box, time_limit=2.0, tolerance=1.05 * sampled)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0 + 10.0, elapsed  # the limit, plus the slack of stopping a solver and a leaf batch
    assert not res.complete, res
    assert res.certified_max_abs_diff >= max(sampled, res.found_max_abs_diff)
