"""What is known about every ReLU neuron's state over the domain, merged from the stability analyses.

Vocabulary (ISA paper §4): a neuron is *stably inactive* when ``y <= 0`` for every input of the
domain, *stably active* when ``y >= 0`` for every input, otherwise *unstable*.  A witness (an input of
the domain where ``y`` is positive or negative beyond rounding noise, see ``witness_floor``) disproves
one of the two; only a certificate (a bounds proof, exact, or a MILP optimality proof up to the margin
of ``epsilons``) proves one.
Neurons with neither are *undecided* and are always kept.

Each analysis returns ``Findings``; ``merge`` combines them (the ``sample`` pass's in-domain
witnesses among them) in the order the passes ran.  A certificate contradicted by a witness is never used: the
neuron is kept and a warning says so (this can only come from float rounding at ``y == 0``).

Two annotations carry this between passes: :class:`Stability` (every ``Findings`` so far, for one network)
and :class:`DomainBounds` (sound pre-activation bounds over the box and every neuron's margin, computed
once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..ir import Network

ACTIVE, INACTIVE = "active", "inactive"

EPS_REL = 1e-5
"""MILP margin of a pre-activation, relative to the scale of its row (see ``epsilons``)."""
WITNESS_FLOAT64 = 1e-4
WITNESS_FLOAT32 = 1e-1
"""Witness thresholds as fractions of that margin: above float64 / float32 rounding noise of an exact 0."""


def epsilons(net: Network, lo: np.ndarray, hi: np.ndarray, bounds=None) -> list[np.ndarray]:
    """The MILP margin of every neuron's pre-activation over the box: ``1e-5 * max(1, S_i)`` with ``S_i``
    the magnitude of the terms the pre-activation sums (``onnxcomp.bounds.row_scales``), i.e. ten times
    the solvers' feasibility tolerance on the scale of that MILP row.  A MILP certificate states that no
    input reaches ``y >= eps`` (``y <= -eps``); a neuron removed on one may reach ``(0, eps)``, and
    ``fold`` reports the resulting worst-case output error.

    Witnesses use much smaller thresholds (``witness_floor``): only rounding noise of a pre-activation
    that is 0 in exact arithmetic is ignored, so any real activity seen keeps the neuron.

    ``bounds``: the CROWN bounds of this box (``crown_bounds`` of ``(lo, hi)`` as one box) when the caller
    has them already."""
    from ..bounds import crown_bounds, row_scales

    lo = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1)
    b = crown_bounds(net, lo[None, :], hi[None, :]) if bounds is None else bounds
    return [EPS_REL * np.maximum(1.0, s) for s in row_scales(net, b, lo, hi)]


def witness_floor(eps: list, float32: bool = False) -> list:
    """Per neuron, how far from 0 a computed pre-activation must be to count as a witness: above the
    rounding noise of float64 (analyses) or float32 (onnxruntime sampling) forward passes."""
    frac = WITNESS_FLOAT32 if float32 else WITNESS_FLOAT64
    return [frac * e for e in eps]


@dataclass
class Findings:
    """What one stability analysis established, per layer (aligned with the network it analysed).

    ``seen_active``/``seen_inactive``: witnesses (inputs of the domain with y > 0 / y < 0).
    ``proven_inactive``/``proven_active``: certificates.  ``lower``/``upper``: sound bounds when known.
    ``epsilon``: for MILP certificates, the margin used (no input reaches y >= epsilon / y <= -epsilon,
    up to the solver's tolerances); 0 for exact proofs.
    """

    source: str
    seen_active: list | None = None
    seen_inactive: list | None = None
    proven_inactive: list | None = None
    proven_active: list | None = None
    lower: list | None = None
    upper: list | None = None
    epsilon: list | None = None
    fingerprint: str = ""
    details: dict = field(default_factory=dict)
    parts: list | None = None

    def flatten(self) -> list:
        """This finding and the findings it carries (one per method or kind of certificate a pass had)."""
        return [self] + [f for p in (self.parts or []) for f in p.flatten()]


@dataclass
class StabilityState:
    """The merged knowledge, per layer of the analysed network."""

    seen_active: list
    seen_inactive: list
    proven_inactive: list
    proven_active: list
    proof: list  # per layer: array of str (which analysis certified the neuron, "" if none)
    epsilon: list  # per layer: margin of the certificate (0 = exact)
    lower: list | None
    upper: list | None
    conflicts: list = field(default_factory=list)

    def undecided(self, k: int) -> np.ndarray:
        return ~(self.proven_inactive[k] | self.proven_active[k]) & ~(self.seen_active[k] & self.seen_inactive[k])

    def need_active_witness(self, k: int) -> np.ndarray:
        """Neurons never seen active and not yet proven inactive (ISA's set P)."""
        return ~self.seen_active[k] & ~self.proven_inactive[k] & ~self.proven_active[k]

    def need_inactive_witness(self, k: int) -> np.ndarray:
        """Neurons never seen inactive and not yet proven active (ISA's set Q)."""
        return ~self.seen_inactive[k] & ~self.proven_active[k] & ~self.proven_inactive[k]

    def progress(self, net: Network) -> list[tuple[int, int, int]]:
        """(layer id, decided, open) per hidden ReLU layer, for ``Progress.layers``."""
        hidden = [k for k in range(len(net.layers) - 1) if net.layers[k].is_relu]
        return [(int(net.layers[k].layer_id), int(net.layers[k].n_out - n), int(n))
                for k in hidden for n in [self.undecided(k).sum()]]

    def counts(self, net: Network) -> dict:
        hidden = [k for k in range(len(net.layers) - 1) if net.layers[k].is_relu]
        return {
            "stably_inactive": int(sum(self.proven_inactive[k].sum() for k in hidden)),
            "stably_active": int(sum((self.proven_active[k] & ~self.proven_inactive[k]).sum() for k in hidden)),
            "unstable": int(sum((self.seen_active[k] & self.seen_inactive[k]).sum() for k in hidden)),
            "undecided": int(sum(self.undecided(k).sum() for k in hidden)),
        }


def empty_state(net: Network) -> StabilityState:
    z = [np.zeros(layer.n_out, dtype=bool) for layer in net.layers]
    return StabilityState(
        seen_active=[a.copy() for a in z], seen_inactive=[a.copy() for a in z],
        proven_inactive=[a.copy() for a in z], proven_active=[a.copy() for a in z],
        proof=[np.full(layer.n_out, "", dtype=object) for layer in net.layers],
        epsilon=[np.zeros(layer.n_out) for layer in net.layers], lower=None, upper=None,
    )


def merge(net: Network, findings: Iterable[Findings]) -> StabilityState:
    """Combine the witnesses and certificates of every stability analysis that ran on ``net`` (findings
    computed on another network, by fingerprint, are ignored)."""
    st = empty_state(net)
    fp = net.fingerprint()
    for found in findings:
        for part in found.flatten():
            if not part.fingerprint or part.fingerprint == fp:
                _absorb(st, part, len(net.layers))
    # A witness beats a certificate: keep the neuron (only float rounding at y == 0 can cause this).
    for k in range(len(net.layers)):
        bad_in = st.proven_inactive[k] & st.seen_active[k]
        bad_act = st.proven_active[k] & st.seen_inactive[k]
        for i in np.flatnonzero(bad_in | bad_act):
            st.conflicts.append((k, int(i)))
        st.proven_inactive[k] &= ~bad_in
        st.proven_active[k] &= ~bad_act
    return st


@dataclass(frozen=True)
class Stability:
    """Annotation: everything the stability analyses established about one network over the domain, as
    the ``Findings`` of each (in the order they ran).  Passes extend it functionally."""

    fingerprint: str
    findings: tuple = ()

    @classmethod
    def start(cls, net: Network, previous: Stability | None = None, sampled=None) -> Stability:
        """The stability known so far about ``net``: ``previous`` when it describes ``net``, plus the
        witnesses of ``sampled`` (``ActivationStats`` of the ``sample`` pass) unless already in it."""
        fp = net.fingerprint()
        found = previous.findings if previous is not None and previous.fingerprint == fp else ()
        witnesses = sampled.witnesses() if sampled is not None else None
        if witnesses is not None and witnesses.fingerprint in ("", fp) and not any(f is witnesses for f in found):
            found = found + (witnesses,)
        return cls(fp, found)

    def extended(self, *more: Findings) -> Stability:
        return Stability(self.fingerprint, self.findings + tuple(more))

    def matches(self, net: Network) -> bool:
        return self.fingerprint == net.fingerprint()

    def state(self, net: Network) -> StabilityState:
        return merge(net, self.findings)

    def latest(self, source: str) -> Findings | None:
        """The most recent top-level findings of analysis ``source`` (e.g. ``"milp"``)."""
        return next((f for f in reversed(self.findings) if f.source == source), None)


@dataclass(frozen=True)
class DomainBounds:
    """Annotation: sound pre-activation bounds of every layer over the domain box (1-D arrays per layer)
    and every neuron's MILP margin (``epsilons``), computed once and reused by the later analyses."""

    lower: tuple
    upper: tuple
    eps: tuple
    method: str
    fingerprint: str

    def matches(self, net: Network) -> bool:
        return self.fingerprint == net.fingerprint()

    def tightened(self, lower, upper, method: str) -> DomainBounds:
        """These bounds intersected with other sound ones (e.g. from LP/MILP bound tightening)."""
        lo = tuple(np.maximum(a, b) for a, b in zip(self.lower, lower))
        up = tuple(np.minimum(a, b) for a, b in zip(self.upper, upper))
        return DomainBounds(lo, up, self.eps, method, self.fingerprint)


def _absorb(st: StabilityState, ann: Findings, n_layers: int) -> None:
    """Add one analysis's witnesses, certificates and bounds to the merged state."""
    for k in range(n_layers):
        for seen, attr in ((ann.seen_active, "seen_active"), (ann.seen_inactive, "seen_inactive")):
            if seen is not None and k < len(seen):
                getattr(st, attr)[k] |= seen[k]
        for proven, attr in ((ann.proven_inactive, "proven_inactive"), (ann.proven_active, "proven_active")):
            if proven is None or k >= len(proven):
                continue
            new = proven[k] & ~getattr(st, attr)[k]
            getattr(st, attr)[k] |= proven[k]
            st.proof[k][new] = ann.source
            if ann.epsilon is not None:
                st.epsilon[k][new] = np.maximum(st.epsilon[k][new], ann.epsilon[k][new])
    if ann.lower is not None:
        if st.lower is None:
            st.lower = [l.copy() for l in ann.lower]
            st.upper = [u.copy() for u in ann.upper]
        else:
            st.lower = [np.maximum(a, b) for a, b in zip(st.lower, ann.lower)]
            st.upper = [np.minimum(a, b) for a, b in zip(st.upper, ann.upper)]
