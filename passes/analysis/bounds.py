"""``bounds``: sound pre-activation bounds over the input box, and the stability they prove.

The propagation itself (interval arithmetic and CROWN/DeepPoly back-substitution, widened so that float
error can never create a false proof) lives in ``onnxcomp.bounds``; this pass runs it on the domain box
and turns ``upper <= 0`` into "stably inactive" and ``lower >= 0`` into "stably active" certificates.

A neuron whose bounds are within its MILP margin of 0 on the wrong side (``0 < upper < eps``, e.g. a
pre-activation that is 0 in exact arithmetic and whose bounds are only the rounding margin) gets the
same kind of certificate a MILP would give it, "no input reaches ``y >= eps``", with its actual slack
(``upper``) as the epsilon the report accounts for (proof ``bounds-epsilon``).  Witnesses still beat it.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.bounds import crown_bounds, interval_bounds, prove  # noqa: F401 (crown/interval re-exported)
from onnxcomp.ir import Network
from onnxcomp.pipeline import ANALYSIS, Context, register

from .stability_state import Findings, epsilons


@register("bounds", ANALYSIS, "sound pre-activation bounds (interval + CROWN back-substitution) and the stability they prove",
          paper="ISA §4 (big-M); CROWN/DeepPoly")
def run(net: Network, ctx: Context) -> Findings:
    box = ctx.need_box()
    lo, hi = box.lo[None, :], box.hi[None, :]
    method = ctx.opt("bounds_method", "crown")
    bounds = interval_bounds(net, lo, hi) if method == "interval" else crown_bounds(net, lo, hi)
    inactive, active = prove(net, bounds)
    lower, upper = [b[0] for b in bounds.lower], [b[0] for b in bounds.upper]
    exact = Findings(source="bounds", proven_inactive=inactive, proven_active=active, lower=lower, upper=upper,
                     fingerprint=net.fingerprint(), details={"method": method})
    eps = epsilons(net, ctx.box.lo, ctx.box.hi)
    relu = [layer.is_relu for layer in net.layers]
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
    ctx.entry.update({"method": method, "proven_inactive": n_in, "proven_active": n_act, "within_epsilon": n_near,
                      "message": f"{n_in} stably inactive, {n_act} stably active proven by {method} bounds"
                                 + (f", {n_near} within epsilon of 0" if n_near else "")})
    exact.parts = [near]
    return exact
