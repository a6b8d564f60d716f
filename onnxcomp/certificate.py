"""Proof-carrying compression: the stability claims an exact output rests on, written into the file.

``fold`` (LEO++) removes or merges neurons because they are stably inactive or stably active over the
domain.  The certificate lists exactly those claims, per hidden layer of the network the fold started
from: every neuron claimed stably inactive or active, the kind of proof that established it (``bounds``,
``bounds-epsilon``, ``split``, ``split-epsilon``, ``milp``) and the margin epsilon it holds up to, plus the
fingerprint of that network.  The output file carries it in its metadata (``onnxcomp.certificate``,
compact JSON), beside the domain (``onnxcomp.domain``).

``verify --formal`` uses it (:mod:`onnxcomp.replay`) to check the candidate independently of the run that
wrote it: the LEO++ rewrite of the reference under the claims must give the candidate's weights, and
every claim is proven again by a different method.  A reviewer then trusts the file without trusting
the run.
"""

from __future__ import annotations

import json

import numpy as np

from .conv import is_conv
from .errors import InputError
from .ir import Network
from .stability.state import StabilityState, empty_state

VERSION = 1
META_KEY = "certificate"
STATES = ("inactive", "active")


BITS = "bits:"


def pack_ids(ids) -> str:
    """Neuron ids as ranges, ``"0-5,9,12-40"`` (a dead channel is one range), or, when shorter (thousands of
    scattered conv units), ``"bits:"`` + base64 of the zlib-compressed bitmap."""
    import base64
    import zlib

    ids = sorted(int(i) for i in ids)
    parts, start = [], None
    for a, b in zip(ids, ids[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            parts.append(str(start) if start == a else f"{start}-{a}")
            start = None
    ranges = ",".join(parts)
    if len(ranges) > 64:
        mask = np.zeros(ids[-1] + 1, bool)
        mask[ids] = True
        bits = BITS + base64.b64encode(zlib.compress(np.packbits(mask).tobytes(), 9)).decode("ascii")
        if len(bits) < len(ranges):
            return bits
    return ranges


def unpack_ids(packed) -> list:
    """The ids of :func:`pack_ids` (a plain list of ints is accepted too); ``ValueError`` when malformed."""
    import base64
    import binascii
    import zlib

    if isinstance(packed, list):
        return [int(i) for i in packed]
    if isinstance(packed, str) and packed.startswith(BITS):
        try:
            raw = zlib.decompress(base64.b64decode(packed[len(BITS):], validate=True))
        except (binascii.Error, zlib.error) as exc:
            raise ValueError(f"bitmap ({exc})") from None
        return np.flatnonzero(np.unpackbits(np.frombuffer(raw, np.uint8))).tolist()
    out: list = []
    for part in filter(None, str(packed).split(",")):
        a, _, b = part.partition("-")
        lo, hi = int(a), int(b) if b else int(a)
        if hi < lo:
            raise ValueError(f"range {part!r}")
        out.extend(range(lo, hi + 1))
    return out


def pack_floats(values) -> str:
    """float64 values as ``"b64z:"`` + base64 of their zlib-compressed little-endian bytes (exact)."""
    import base64
    import zlib

    raw = np.asarray(values, dtype="<f8").tobytes()
    return "b64z:" + base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def unpack_floats(packed) -> np.ndarray:
    """The values of :func:`pack_floats` (a number or a list of numbers is accepted too)."""
    import base64
    import zlib

    if isinstance(packed, str) and packed.startswith("b64z:"):
        return np.frombuffer(zlib.decompress(base64.b64decode(packed[5:])), dtype="<f8").astype(np.float64)
    return np.asarray(packed, dtype=np.float64)


MARGIN_STEPS = 4
"""Margins are written rounded up to the grid ``2**(j / MARGIN_STEPS)``: a larger margin is a weaker claim, so
the rounded claim still holds, and a few distinct values compress to almost nothing."""


def round_up_margins(eps: np.ndarray) -> np.ndarray:
    eps = np.asarray(eps, dtype=np.float64)
    up = np.exp2(np.ceil(np.log2(eps) * MARGIN_STEPS) / MARGIN_STEPS)
    return np.maximum(up, eps)  # never below the margin itself, whatever exp2/log2 round to


def issue(net: Network, st: StabilityState) -> dict:
    """The claims ``st`` makes about ``net``'s hidden ReLU neurons (original numbering), the ids of each
    proof kind as ranges (:func:`pack_ids`), the margins of the epsilon claims packed (:func:`pack_floats`).
    A convolution's stably active units are left out: the fold never uses them (it removes only units and
    channels that are constant), so they are no part of what the output rests on.  Margins are rounded up
    (:func:`round_up_margins`)."""
    layers = []
    for k, layer in enumerate(net.layers[:-1]):
        if not layer.is_relu:
            continue
        active = st.proven_active[k] & ~st.proven_inactive[k]
        masks = {"inactive": st.proven_inactive[k], "active": active & (not is_conv(layer))}
        entry: dict = {"layer": int(layer.layer_id), "width": int(layer.n_out)}
        for state, mask in masks.items():
            by_proof: dict = {}
            for i in np.flatnonzero(mask):
                by_proof.setdefault(str(st.proof[k][i]), []).append(int(layer.neuron_ids[i]))
            entry[state] = {proof: pack_ids(ids) for proof, ids in by_proof.items()}
        with_eps = np.flatnonzero((masks["inactive"] | masks["active"]) & (st.epsilon[k] > 0))
        if with_eps.size:
            entry["epsilon"] = {"ids": pack_ids(int(layer.neuron_ids[i]) for i in with_eps),
                                "values": pack_floats(round_up_margins(st.epsilon[k][with_eps]))}
        layers.append(entry)
    return {"version": VERSION, "network": net.fingerprint(), "layers": layers}


def encode(cert: dict) -> str:
    return json.dumps(cert, separators=(",", ":"), sort_keys=True)


def decode(text: str, source: str = "certificate") -> dict:
    """The certificate in a file's metadata, refused (``InputError``) when malformed."""
    try:
        cert = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: not valid JSON ({exc.msg})") from None
    if not isinstance(cert, dict) or cert.get("version") != VERSION or not isinstance(cert.get("layers"), list):
        raise InputError(f"{source}: not an onnxcomp certificate of version {VERSION}")
    return cert


def claimed_state(net: Network, cert: dict, source: str = "certificate") -> StabilityState:
    """The ``StabilityState`` the claims of ``cert`` describe on ``net`` (no witnesses, proofs as claimed).

    Refuses (``InputError``) claims about layers or neurons ``net`` does not have, a neuron claimed twice,
    or claims about a layer that is not a hidden ReLU layer."""
    st = empty_state(net)
    by_id = {layer.layer_id: k for k, layer in enumerate(net.layers[:-1]) if layer.is_relu}
    for entry in cert["layers"]:
        try:
            k = by_id[int(entry["layer"])]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{source}: claims about layer {entry.get('layer')!r}, not a hidden ReLU layer of the "
                             f"reference") from None
        layer = net.layers[k]
        position = {nid: i for i, nid in enumerate(layer.neuron_ids)}
        if int(entry.get("width", -1)) != layer.n_out:
            raise InputError(f"{source}: layer {layer.layer_id} has {layer.n_out} neurons in the reference, the "
                             f"certificate says {entry.get('width')}")
        claimed = np.zeros(layer.n_out, bool)
        for state in STATES:
            for proof, packed in (entry.get(state) or {}).items():
                try:
                    ids = unpack_ids(packed)
                except (TypeError, ValueError):
                    raise InputError(f"{source}: layer {layer.layer_id}: malformed neuron ids {str(packed)[:40]!r}") from None
                for nid in ids:
                    i = position.get(int(nid))
                    if i is None:
                        raise InputError(f"{source}: layer {layer.layer_id} has no neuron {nid}")
                    if claimed[i]:
                        raise InputError(f"{source}: layer {layer.layer_id} neuron {nid} is claimed twice")
                    claimed[i] = True
                    (st.proven_inactive if state == "inactive" else st.proven_active)[k][i] = True
                    st.proof[k][i] = str(proof)
        margins = entry.get("epsilon") or {}
        if set(margins) == {"ids", "values"}:
            try:
                ids, values = unpack_ids(margins["ids"]), unpack_floats(margins["values"]).reshape(-1).tolist()
            except Exception:
                raise InputError(f"{source}: layer {layer.layer_id}: malformed epsilon margins") from None
            if len(ids) != len(values):
                raise InputError(f"{source}: layer {layer.layer_id}: {len(ids)} epsilon ids but {len(values)} values")
            margins = dict(zip(ids, values))
        for nid, eps in margins.items():
            i = position.get(int(nid))
            if i is None or not claimed[i]:
                raise InputError(f"{source}: layer {layer.layer_id}: an epsilon for neuron {nid}, which has no claim")
            value = float(eps)
            if not np.isfinite(value) or value < 0:
                raise InputError(f"{source}: layer {layer.layer_id} neuron {nid}: epsilon {eps!r} is not a number >= 0")
            st.epsilon[k][i] = value
    return st
