"""Stability proven by sound bounds alone: ``upper <= 0`` is stably inactive, ``lower >= 0`` stably active.

The propagation itself (interval arithmetic and CROWN/DeepPoly back-substitution, widened so that float
error can never create a false proof) lives in ``onnxcomp.bounds``.  A neuron whose bounds are within its
MILP margin of 0 on the wrong side (``0 < upper < eps``, e.g. a pre-activation that is 0 in exact
arithmetic and whose bounds are only the rounding margin) gets the same kind of certificate a MILP would
give it, "no input reaches ``y >= eps``", with its actual slack (``upper``) as the epsilon the report
accounts for (proof ``bounds-epsilon``).  Witnesses still beat it.
"""

from __future__ import annotations

import numpy as np

from ..bounds import crown_bounds, interval_bounds
from ..ir import Box, Network
from .state import DomainBounds, Findings, epsilons

METHODS = ("crown", "interval")


def domain_bounds(net: Network, box: Box, method: str = "crown") -> DomainBounds:
    """Sound pre-activation bounds of every layer over ``box`` and every neuron's margin."""
    if method not in METHODS:
        raise ValueError(f"bounds method {method!r}: expected one of {', '.join(METHODS)}")
    lo, hi = box.lo[None, :], box.hi[None, :]
    b = interval_bounds(net, lo, hi) if method == "interval" else crown_bounds(net, lo, hi)
    eps = epsilons(net, box.lo, box.hi, bounds=b if method == "crown" else None)  # the same CROWN bounds
    return DomainBounds(tuple(x[0] for x in b.lower), tuple(x[0] for x in b.upper), tuple(eps), method,
                        net.fingerprint())


def certify(net: Network, bounds: DomainBounds) -> tuple[Findings, dict]:
    """The stability ``bounds`` prove (exactly, and within the margin), and report counts."""
    lower, upper = list(bounds.lower), list(bounds.upper)
    relu = [layer.is_relu for layer in net.layers]
    inactive = [r & (u <= 0) for r, u in zip(relu, upper)]
    active = [r & (l >= 0) for r, l in zip(relu, lower)]
    exact = Findings(source="bounds", proven_inactive=inactive, proven_active=active, lower=lower, upper=upper,
                     fingerprint=net.fingerprint(), details={"method": bounds.method})
    eps = bounds.eps
    near_in = [r & ~i & (u > 0) & (u < e) for r, i, u, e in zip(relu, inactive, upper, eps)]
    near_act = [r & ~a & (l < 0) & (l > -e) for r, a, l, e in zip(relu, active, lower, eps)]
    near = Findings(source="bounds-epsilon", proven_inactive=near_in, proven_active=near_act,
                    epsilon=[np.where(ni, np.maximum(u, 0.0), 0.0) + np.where(na, np.maximum(-l, 0.0), 0.0)
                             for ni, na, l, u in zip(near_in, near_act, lower, upper)],
                    fingerprint=net.fingerprint())
    hidden = range(len(net.layers) - 1)
    n_in = sum(int(inactive[k].sum()) for k in hidden)
    n_act = sum(int(active[k].sum()) for k in hidden)
    n_near = sum(int((near_in[k] | near_act[k]).sum()) for k in hidden)
    exact.parts = [near]
    facts = {"method": bounds.method, "proven_inactive": n_in, "proven_active": n_act, "within_epsilon": n_near,
             "message": f"{n_in} stably inactive, {n_act} stably active proven by {bounds.method} bounds"
                        + (f", {n_near} within epsilon of 0" if n_near else "")}
    return exact, facts
