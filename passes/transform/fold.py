"""``fold`` · LEO++: stably inactive neurons deleted, stably active ones merged, affine layers folded."""

from __future__ import annotations

from onnxcomp import certificate
from onnxcomp.leo import fold
from onnxcomp.pipeline import EXACT, PassResult, register
from onnxcomp.sampling import ActivationStats
from onnxcomp.stability import Stability


@register("fold", conv=True, kind=EXACT, requires=(Stability,), uses=(ActivationStats,),
          summary="LEO++: delete stably inactive neurons, merge stably active ones, fold affine layers",
          paper="ISA Appendix A5 (LEO++)")
def run(net, ctx, opts) -> PassResult:
    stability = Stability.start(net, ctx.get(Stability), ctx.get(ActivationStats))
    st = stability.state(net)
    milp = stability.latest("milp")
    # A MILP certificate only ever comes from a solve that ended optimal (a per-layer ISA after the
    # whole-network one ran out of time, or one per-neuron MILP); the run's own status may still say
    # "timelimit", so both are reported.
    solver_info = {}
    if milp is not None and milp.details.get("solver"):
        solver_info = {"solver": milp.details["solver"], "status": "optimal", "run_status": milp.details.get("status")}
        if milp.details.get("milp_seconds") is not None:
            solver_info["milp_seconds"] = milp.details["milp_seconds"]
    new, report = fold(net, st, solver_info)
    if report.get("constant"):
        ctx.warn("the network is constant on the domain; emitted as a constant")
    if st.conflicts:
        ctx.warn(f"{len(st.conflicts)} neurons proven stable but witnessed otherwise in float32 sampling; kept")
    entry = {"removed_neurons": len(report["removed"]), "folded_layers": len(report["folded_layers"]),
             "widths_before": net.widths, "widths_after": new.widths,
             "epsilon_error_bound": report["epsilon_error_bound"],
             "message": f"widths {net.widths} -> {new.widths}, {len(report['removed'])} neurons removed"
                        + _channels(report)}
    return PassResult(network=new, entry=entry,
                      sections={"stable": report, "certificate": certificate.issue(net, st)})


def _channels(report: dict) -> str:
    """', channels removed: layer 0 2 of 8, ...' for the convolutions that lost channels."""
    parts = [f"layer {l['layer']} {l['channels_removed']} of {l['shape'][0]}" for l in report["layers"]
             if l.get("channels_removed")]
    return f", channels removed: {', '.join(parts)}" if parts else ""
