"""``drop`` · Dense_k(n) -> Dense_k(n − m), Conv_k(C) -> Conv_k(C − m): whole hidden neurons or output channels
removed (a channel with its pooling and the next layer's input channel or columns), the next tunable layer
readjusted by least squares."""

from __future__ import annotations

from dataclasses import dataclass

from onnxcomp.budget import choose
from onnxcomp.channels import unit_count
from onnxcomp.dependence import Dependence
from onnxcomp.errors import UsageError
from onnxcomp.dropping import (SOURCES, UNITS, aligned, droppable, drop_neurons, parse_drop, ranking, removals,
                               unit_noun)
from onnxcomp.options import option
from onnxcomp.pipeline import LOSSY, PassResult, register
from onnxcomp.scores import FisherScores, LookaheadScores

SCORES = {"dependence": Dependence, "fisher": FisherScores, "lap": LookaheadScores}


@dataclass(frozen=True)
class DropOptions:
    drop: float | None = option(None, "fraction (0 < f < 1) or count of hidden neurons (and conv channels) to "
                                "remove", min=0.0)
    score: str = option("auto", "weight score: magnitude, lap or fisher (drop also: dependence, auto); default: the "
                        "scoring analysis that ran", choices=SOURCES)
    drop_units: str = option("all", "which units drop removes: all, channels (conv output channels only: what "
                             "removes a CNN's MACs) or neurons (dense layers only)", choices=UNITS)
    channel_multiple: int = option(16, "a convolution whose channel count is a multiple of this keeps a "
                                   "multiple: onnxruntime runs those in blocks of 8 or 16 channels, so only whole "
                                   "blocks save time (1 = drop any number)", min=1)


def _requires(opts: DropOptions) -> tuple:
    return (SCORES[opts.score],) if opts.score in SCORES else ()


@register("drop", conv=True, kind=LOSSY, options=DropOptions, requires=_requires,
          uses=(Dependence, FisherScores, LookaheadScores),
          summary="remove whole hidden neurons or conv channels, the next layer readjusted by least squares (LRE)",
          paper="LRE-AMC §3.3")
def run(net, ctx, opts: DropOptions) -> PassResult:
    dep = ctx.get(Dependence)
    if dep is not None and not dep.matches(net):
        message = "the 'dependence' analysis was computed on a network a later transform changed"
        if opts.score == "dependence":
            raise UsageError(message + "; run it right before 'drop'")
        ctx.warn(message + "; drop ignores it")
        dep = None
    order, method = ranking(net, opts.score, dep, {"fisher": ctx.get(FisherScores), "lap": ctx.get(LookaheadScores)},
                            opts.drop_units)
    sps = droppable(net, opts.drop_units)
    if not sps and opts.drop_units != "all":
        what = "convolution output channels" if opts.drop_units == "channels" else "dense hidden neurons"
        raise UsageError(f"--drop-units {opts.drop_units}: this network has no {what} that drop can remove")
    total = sum(unit_count(net.layers[sp.k]) for sp in sps)
    noun = unit_noun(net, opts.drop_units)
    n_lossless = sum(1 for c in order if c.lossless)
    calib, cache = ctx.calibration(), {}

    def build(level: int):
        chosen = aligned(net, order[:level], opts.channel_multiple)
        return drop_neurons(net, calib, chosen, dep, cache) if chosen else net

    explicit = None if opts.drop is None else parse_drop(opts.drop, total, len(order), noun)
    choice = choose(build, list(range(n_lossless, len(order) + 1)), "drop", explicit=explicit, default=n_lossless,
                    budget=ctx.budget, probe=ctx.fidelity_probe() if ctx.budget_active else None, labels=ctx.labels,
                    seed=ctx.seed)
    for message in choice.warnings:
        ctx.warn(message)
    new = choice.network
    removed = removals(net, new, order, dep)
    n_exact = sum(1 for r in removed if r["lossless"])
    entry = dict(choice.entry, score=method, widths_before=net.widths, widths_after=new.widths, removed=removed,
                 lossless_removed=n_exact, lossless_available=n_lossless,
                 # every removal was lossless: the output equals the input network's up to float rounding
                 all_lossless=n_exact == len(removed), changed=new is not net)
    if net.has_conv:
        convs = [sp for sp in droppable(net, "channels")]
        entry["channels_before"] = {net.layers[sp.k].layer_id: net.layers[sp.k].out_channels for sp in convs}
        entry["channels_after"] = {new.layers[sp.k].layer_id: new.layers[sp.k].out_channels for sp in convs}
        entry["macs_before"], entry["macs_after"] = net.macs, new.macs
    if not removed:
        hint = "" if dep is not None else " (run 'dependence' first, e.g. -p lre, to find lossless ones)"
        entry["message"] = f"no {'unit' if net.has_conv else 'neuron'} dropped{hint}"
    else:
        shape = (f"channels {list(entry['channels_before'].values())} -> {list(entry['channels_after'].values())}, "
                 f"MACs {net.macs:,} -> {new.macs:,}" if net.has_conv else f"widths {net.widths} -> {new.widths}")
        by_layer: dict = {}
        for r in removed:
            if "channel" in r:
                by_layer.setdefault(r["layer"], []).append(r["channel"])
        gone = "; ".join(f"layer {lid} channels {sorted(chs)}" for lid, chs in by_layer.items())
        entry["message"] = (f"dropped {len(removed)} of {total} hidden {noun} ({n_exact} lossless, "
                            f"{len(removed) - n_exact} by {method} score): {shape}" + (f" ({gone})" if gone else ""))
    return PassResult(network=new, entry=entry)
