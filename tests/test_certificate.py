"""The certificate an exact output carries: what it claims, read back exactly, malformed ones refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import onnxcomp
from onnxcomp import certificate
from onnxcomp.errors import InputError
from onnxcomp.ir import Box
from onnxcomp.pipeline import Context, PassManager
from onnxcomp.stability import Stability

from builders import random_network


def proven(seed=0):
    net = random_network(np.random.default_rng(seed), 3, [6, 5], 2, shift=-0.3)
    ctx = Context(box=Box(-np.ones(3), np.ones(3)), samples=500, corners=8)
    PassManager().run(net, ["sample", "bounds", "falsify", "milp"], ctx)
    return net, ctx.get(Stability).state(net), ctx


@pytest.mark.parametrize("seed", range(4))
def test_claims_read_back_to_the_same_states_proofs_and_epsilons(seed):
    net, st, _ = proven(seed)
    assert sum(int((a | b).sum()) for a, b in zip(st.proven_inactive, st.proven_active)) > 0  # something to claim
    cert = certificate.decode(certificate.encode(certificate.issue(net, st)))
    back = certificate.claimed_state(net, cert)
    for k in range(len(net.layers) - 1):
        assert np.array_equal(back.proven_inactive[k], st.proven_inactive[k])
        assert np.array_equal(back.proven_active[k], st.proven_active[k] & ~st.proven_inactive[k])
        claimed = back.proven_inactive[k] | back.proven_active[k]
        assert list(back.proof[k][claimed]) == list(st.proof[k][claimed])
        # margins are written rounded up to a quarter power of two: a weaker, still true, claim
        eps, written = st.epsilon[k][claimed], back.epsilon[k][claimed]
        assert np.all(written >= eps) and np.all(written <= eps * 2 ** (1 / certificate.MARGIN_STEPS) * (1 + 1e-12))
        assert np.array_equal(written == 0, eps == 0)
    assert cert["network"] == net.fingerprint()


def test_an_exact_output_carries_its_certificate_and_domain():
    result = onnxcomp.compress("models/digits_2x32_l1.onnx", "stable", domain="0:1", samples=1000)
    meta = {p.key: p.value for p in result.model.metadata_props}
    cert = json.loads(meta["onnxcomp.certificate"])
    removed = {(r["layer"], r["neuron"]) for r in result.report["stable"]["removed"] if r["state"] == "stably_inactive"}
    claimed = {(l["layer"], n) for l in cert["layers"] for ids in l["inactive"].values()
               for n in certificate.unpack_ids(ids)}
    assert removed == claimed and removed
    assert json.loads(meta["onnxcomp.domain"])["source"] == "0:1"


def test_a_lossy_output_carries_no_certificate():
    result = onnxcomp.compress("models/digits_2x32_l1.onnx", "stable,lap", domain="0:1", sparsity=0.3,
                               data="models/data/digits_calib.npz", samples=500)
    assert "onnxcomp.certificate" not in {p.key for p in result.model.metadata_props}


@pytest.mark.parametrize("mutate,message", [
    (lambda c: c["layers"][0].update(layer=7), "claims about layer 7"),
    (lambda c: c["layers"][0].update(width=99), "the certificate says 99"),
    (lambda c: c["layers"][0]["inactive"].update(bounds=c["layers"][0]["inactive"].get("bounds", "") + ",1000"),
     "has no neuron 1000"),
    (lambda c: c["layers"][0]["inactive"].update(bounds="3-1"), "malformed neuron ids"),
    (lambda c: c["layers"][0].update(epsilon={"ids": "0-2", "values": certificate.pack_floats([1e-5])}),
     "3 epsilon ids but 1 values"),
    (lambda c: c["layers"][0].update(epsilon={"1000": 1e-5}), "an epsilon for neuron 1000"),
])
def test_malformed_claims_are_refused(mutate, message):
    net, st, _ = proven(1)
    cert = certificate.issue(net, st)
    mutate(cert)
    with pytest.raises(InputError, match=message):
        certificate.claimed_state(net, cert)


def test_a_neuron_claimed_twice_is_refused():
    net, st, _ = proven(2)
    cert = certificate.issue(net, st)
    cert["layers"][0]["inactive"]["milp"] = [0]
    cert["layers"][0]["active"]["bounds"] = [0]
    with pytest.raises(InputError, match="neuron 0 is claimed twice"):
        certificate.claimed_state(net, cert)


@pytest.mark.parametrize("text", ["not json", "[]", '{"version": 99, "layers": []}'])
def test_what_is_not_a_certificate_is_refused(text):
    with pytest.raises(InputError):
        certificate.decode(text)


@given(st.lists(st.integers(0, 5000), unique=True, max_size=300))
def test_packed_ids_and_floats_round_trip(ids):
    packed = certificate.pack_ids(ids)
    assert certificate.unpack_ids(packed) == sorted(ids)
    assert len(packed) <= max(1, len(",".join(map(str, sorted(ids)))))
    values = np.random.default_rng(len(ids)).normal(size=len(ids)) * 1e-7
    assert np.array_equal(certificate.unpack_floats(certificate.pack_floats(values)), values)
