"""Certificate replay (``verify --formal`` on files onnxcomp wrote): every proof kind is re-proven and the
output certified; tampered certificates and tampered weights are refused; the bound is sound."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import onnxcomp
from onnxcomp import certificate
from onnxcomp.ir import Box, Dense, Network
from onnxcomp.reader import lower
from onnxcomp.replay import replay
from onnxcomp.timing import Deadline
from onnxcomp.writer import to_model

from builders import random_network


def listed(cert: dict) -> dict:
    """A copy of ``cert`` with every packed id range as a plain list (the decoder takes both), to edit."""
    out = json.loads(json.dumps(cert))
    for layer in out["layers"]:
        for state in certificate.STATES:
            layer[state] = {p: certificate.unpack_ids(ids) for p, ids in (layer.get(state) or {}).items()}
    return out


def compressed(net: Network, box: Box, **options):
    """(reference, candidate read back from the written file, certificate) of an exact run on ``net``."""
    result = onnxcomp.compress(to_model(net), "stable", domain=(box.lo, box.hi), samples=2000, **options)
    model = result.model
    cert = certificate.decode({p.key: p.value for p in model.metadata_props}["onnxcomp.certificate"])
    return lower(to_model(net)), lower(model), cert, result.report


def sampled_diff(a: Network, b: Network, box: Box, n: int = 20000) -> float:
    rng = np.random.default_rng(5)
    x = np.vstack([box.sample(n, rng), box.corners(512, rng)])
    return float(np.abs(a.forward(x) - b.forward(x)).max())


def proofs(cert: dict) -> set:
    return {p for layer in cert["layers"] for state in ("inactive", "active") for p in layer[state]}


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), n_in=st.integers(2, 4), widths=st.lists(st.integers(3, 8), min_size=1, max_size=3),
       shift=st.sampled_from([-0.5, 0.0, 0.5]))
def test_replay_certifies_exact_outputs_and_its_bound_is_sound(seed, n_in, widths, shift):
    net = random_network(np.random.default_rng(seed), n_in, widths, 2, shift=shift)
    box = Box(-np.ones(n_in), np.ones(n_in))
    ref, cand, cert, _ = compressed(net, box, time_limit=30)
    out = replay(ref, cand, box, cert, deadline=Deadline(60), tolerance=1e-4)
    assert out.certified, out.reason
    assert not out.failed and sum(out.reproven.values()) == out.claims
    assert out.bound >= sampled_diff(ref, cand, box) - 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("method,n_in,seed,shift,options,expected", [
    ("split", 3, 11, -0.4, {"split_leaf_binaries": 0}, {"split"}),  # pieces only: exact split proofs
    ("split", 3, 11, -0.4, {}, {"split-epsilon"}),  # piece MILPs: split proofs up to the margin
    ("isa", 10, 1, -0.8, {}, {"milp"}),
    ("per-neuron", 10, 1, -0.8, {}, {"milp"}),
    ("feasibility", 10, 1, -0.8, {}, {"alpha", "bab", "bab-epsilon", "milp", "lp"}),
])
def test_every_proof_kind_is_re_proven(method, n_in, seed, shift, options, expected):
    rng = np.random.default_rng(seed)
    net = random_network(rng, n_in, [12, 10], 3, shift=shift)
    half = 1.0 if n_in <= 3 else 0.5
    box = Box(-half * np.ones(n_in), half * np.ones(n_in))
    ref, cand, cert, report = compressed(net, box, stability_method=method, time_limit=60, solver="scip", **options)
    kinds = proofs(cert)
    assert kinds & expected, (kinds, report["passes"][-2]["message"])  # the method proved something
    out = replay(ref, cand, box, cert, deadline=Deadline(120), tolerance=1e-4)
    assert out.certified, out.reason
    assert sum(out.reproven.values()) == out.claims
    # what the run proved with a MILP or by splitting was proven again by another method
    assert any(k.startswith("replay-") for k in out.reproven) or kinds <= {"bounds", "bounds-epsilon"}


def zero_crossing_network() -> tuple[Network, Box]:
    """y1 = relu(x0) - relu(x0) is 0 in exact arithmetic: bounds show it only within the margin (the
    ``bounds-epsilon`` / ``split-epsilon`` kinds), and the neuron reading it is removed on such a claim."""
    w0 = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    w1 = np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    w2 = np.array([[1.0, 1.0]])
    net = Network((Dense(w0, np.zeros(3)), Dense(w1, np.zeros(2)), Dense(w2, np.zeros(1), "linear")), 2)
    return net, Box(-np.ones(2), np.ones(2))


def test_epsilon_claims_are_re_proven_with_their_margin():
    net, box = zero_crossing_network()
    ref, cand, cert, report = compressed(net, box, time_limit=30)
    assert proofs(cert) & {"bounds-epsilon", "split-epsilon"}, cert
    out = replay(ref, cand, box, cert, deadline=Deadline(30), tolerance=1e-4)
    assert out.certified, out.reason
    assert out.bound >= sampled_diff(ref, cand, box)
    assert out.bound <= 1e-4


# ---- refused ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    result = onnxcomp.compress("models/digits_2x32_l1.onnx", "stable", domain="0:1", samples=2000)
    model = result.model
    cert = certificate.decode({p.key: p.value for p in model.metadata_props}["onnxcomp.certificate"])
    ref = lower(onnx.load("models/digits_2x32_l1.onnx"))
    return ref, model, cert, Box(np.zeros(64), np.ones(64))


def test_the_untampered_digits_output_is_certified(digits):
    ref, model, cert, box = digits
    out = replay(ref, lower(model), box, cert, deadline=Deadline(60), tolerance=1e-4)
    assert out.certified and out.reproven.get("bounds", 0) >= 9, out


def test_a_claim_that_is_false_is_refused(digits):
    ref, model, cert, box = digits
    forged = listed(cert)
    layer = forged["layers"][0]
    claimed = {n for ids in layer["inactive"].values() for n in ids} | {n for ids in layer["active"].values() for n in ids}
    victim = next(i for i in range(layer["width"]) if i not in claimed)  # an unstable neuron
    layer["inactive"].setdefault("milp", []).append(victim)
    out = replay(ref, lower(model), box, forged, deadline=Deadline(60), tolerance=1e-4)
    assert not out.certified
    # the candidate still has the neuron, so the fold under the forged claims is not the candidate
    assert "not the reference folded under its certificate" in out.reason


def test_a_false_claim_matching_a_tampered_candidate_is_refuted(digits):
    """Forge both: claim an unstable neuron inactive AND remove it from the candidate (the fold under the
    forged claims); the structure then matches, and re-proving the claim refutes it."""
    from onnxcomp.leo import fold

    ref, model, cert, box = digits
    forged = listed(cert)
    layer = forged["layers"][0]
    claimed = {n for ids in layer["inactive"].values() for n in ids} | {n for ids in layer["active"].values() for n in ids}
    victim = next(i for i in range(layer["width"]) if i not in claimed)
    layer["inactive"].setdefault("milp", []).append(victim)
    tampered, _ = fold(ref, certificate.claimed_state(ref, forged))
    out = replay(ref, lower(to_model(tampered)), box, forged, deadline=Deadline(60), tolerance=1e-4)
    assert not out.certified
    assert any(f["neuron"] == victim and "refuted" in f["why"] for f in out.failed), out.failed


def test_a_removed_claim_is_refused(digits):
    ref, model, cert, box = digits
    forged = listed(cert)
    layer = next(l for l in forged["layers"] if any(l["inactive"].values()))
    proof = next(p for p, ids in layer["inactive"].items() if ids)
    layer["inactive"][proof] = layer["inactive"][proof][1:]
    out = replay(ref, lower(model), box, forged, deadline=Deadline(60), tolerance=1e-4)
    assert not out.certified and "not the reference folded under its certificate" in out.reason


def test_a_certificate_for_another_network_is_refused(digits):
    ref, model, cert, box = digits
    other = dict(cert, network="0" * 64)
    out = replay(ref, lower(model), box, other, deadline=Deadline(60))
    assert not out.certified and "another network" in out.reason


def test_tampered_weights_are_refused(digits):
    ref, model, cert, box = digits
    cand = lower(model)
    layers = list(cand.layers)
    w = np.array(layers[1].weight)
    w[0, 0] *= 1.001
    layers[1] = Dense(w, layers[1].bias, layers[1].activation)
    out = replay(ref, cand.with_layers(layers), box, cert, deadline=Deadline(60))
    assert not out.certified and "layer 1: weight[0, 0]" in out.reason


# ---- verify --formal end to end ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_verify_formal_certifies_an_exact_output_by_replay(tmp_path):
    src = "models/external/acasxu/ACASXU_run2a_1_1_batch_2000.onnx"
    result = onnxcomp.compress(src, "stable", domain="models/external/acasxu/prop_3.vnnlib")
    result.save(tmp_path / "small.onnx")
    check = onnxcomp.verify(src, str(tmp_path / "small.onnx"), formal=True, time_limit=60)
    assert check.passed, check.reason
    assert check.formal["method"].startswith("certificate replay")
    assert check.formal["replay"]["certified"] and not check.formal["replay"]["failed"]


@pytest.mark.slow
@pytest.mark.parametrize("mutant", ["bias", "weight"])
def test_a_mutant_with_a_known_difference_is_never_certified(mutant, tmp_path):
    """A shifted output bias differs by exactly the shift everywhere; a weight changed on a path that is
    always active changes the output by a known amount at a known input: neither may pass --formal."""
    src = "models/external/acasxu/ACASXU_run2a_1_1_batch_2000.onnx"
    domain = "models/external/acasxu/prop_3.vnnlib"
    result = onnxcomp.compress(src, "stable", domain=domain)
    model = result.model
    cand = lower(model)
    layers = list(cand.layers)
    if mutant == "bias":
        b = np.array(layers[-1].bias)
        b[0] += 1e-3
        layers[-1] = Dense(layers[-1].weight, b, layers[-1].activation)
        known = 1e-3
    else:
        w = np.array(layers[-1].weight)
        col = int(np.argmax(np.abs(w[0])))
        w[0, col] *= 1.01
        layers[-1] = Dense(w, layers[-1].bias, layers[-1].activation)
        box = onnxcomp.api.load_domain(domain, 5, None)
        x = box.sample(20000, np.random.default_rng(0))
        known = float(np.abs(cand.with_layers(layers).forward(x) - cand.forward(x)).max())
    mutated = to_model(cand.with_layers(layers), metadata={k.removeprefix("onnxcomp."): v for k, v in
                                                            ((p.key, p.value) for p in model.metadata_props)
                                                            if k.startswith("onnxcomp.") and k != "onnxcomp.version"})
    onnx.save(mutated, tmp_path / "mutant.onnx")
    check = onnxcomp.verify(src, str(tmp_path / "mutant.onnx"), formal=True, time_limit=30,
                            atol=known / 10, rtol=0.0)
    assert not check.passed
    assert check.formal["certified_max_abs_diff"] >= known * (1 - 1e-6)
    assert not check.formal["replay"]["certified"]
