"""``bounds``: sound pre-activation bounds over the input box, and the stability they prove.

The propagation itself (interval arithmetic and CROWN/DeepPoly back-substitution, widened so that float
error can never create a false proof) lives in ``onnxcomp.bounds``; this pass runs it on the domain box
and turns ``upper <= 0`` into "stably inactive" and ``lower >= 0`` into "stably active" certificates.
"""

from __future__ import annotations

from onnxcomp.bounds import Bounds, crown_bounds, interval_bounds, magnitudes, prove  # noqa: F401 (re-exported)
from onnxcomp.ir import Network
from onnxcomp.pipeline import ANALYSIS, Context, register

from .stability_state import Findings


@register("bounds", ANALYSIS, "sound pre-activation bounds (interval + CROWN back-substitution) and the stability they prove",
          paper="ISA §4 (big-M); CROWN/DeepPoly")
def run(net: Network, ctx: Context) -> Findings:
    if ctx.box is None:
        from onnxcomp.errors import UsageError

        raise UsageError("needs --domain")
    lo, hi = ctx.box.lo[None, :], ctx.box.hi[None, :]
    method = ctx.opt("bounds_method", "crown")
    bounds = interval_bounds(net, lo, hi) if method == "interval" else crown_bounds(net, lo, hi)
    inactive, active = prove(net, bounds)
    findings = Findings(
        source="bounds",
        proven_inactive=inactive,
        proven_active=active,
        lower=[b[0] for b in bounds.lower],
        upper=[b[0] for b in bounds.upper],
        fingerprint=net.fingerprint(),
        details={"method": method},
    )
    hidden = range(len(net.layers) - 1)
    n_in = sum(int(inactive[k].sum()) for k in hidden)
    n_act = sum(int(active[k].sum()) for k in hidden)
    ctx.entry.update({"method": method, "proven_inactive": n_in, "proven_active": n_act,
                      "message": f"{n_in} stably inactive, {n_act} stably active proven by {method} bounds"})
    return findings
