"""LEO++: the exact rewrites that stability makes possible, all layers at once (the ``fold`` pass's algebra).

* stably inactive neuron · Dense -> its row of ``W^l, b^l`` and its column of ``W^{l+1}`` deleted;
* neuron with zero incoming weights -> the constant ``act(b_i)`` moved into the next layer's bias;
  neuron with zero outgoing weights -> deleted;
* stably active set S of a layer that still has unstable neurons -> ``x_S`` is affine in the layer input,
  so rows of ``W_S`` that depend linearly on a basis B (``W_D = K W_B``) are deleted after moving their
  outgoing weights onto the basis (``W^{l+1}[:, B] += W^{l+1}[:, D] K``,
  ``b^{l+1} += W^{l+1}[:, D] (b_D - K b_B)``); dependence is accepted only when the reconstruction
  residual is at float64 round-off level;
* layer with no unstable neuron left (all stably active, or a linear layer) · Dense -> one Dense
  (``W^{l+1}_S W^l_S``, ``b^{l+1} + W^{l+1}_S b^l_S``) when that does not add parameters; otherwise its
  ReLU is dropped (it is the identity on the domain);
* a network that becomes constant on the domain is emitted as such, with a warning.

Everything is exact on the domain in real arithmetic; the written model differs only by float
reassociation, which the verification step measures.  Removals certified by a MILP with a margin
epsilon (see ``onnxcomp.stability.schedule``) contribute to ``stable.epsilon_error_bound``, a
worst-case bound on the output change they can cause.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .channels import carried_mask, carrier_end
from .conv import is_conv
from .ir import LINEAR, RELU, Dense, Network
from .linalg import pivoted_qr
from .stability.state import StabilityState

RANK_TOL = 1e-10


@dataclass
class _Layer:
    w: np.ndarray
    b: np.ndarray
    act: str
    ids: list
    layer_id: int
    source: str
    inactive: np.ndarray
    active: np.ndarray
    proof: np.ndarray
    eps: np.ndarray

    def keep(self, mask: np.ndarray, consumer: "_Layer") -> None:
        """Keep only the neurons in ``mask``, and the consumer's input columns that read them."""
        consumer.w = consumer.w[:, mask]
        self.w, self.b = self.w[mask], self.b[mask]
        self.ids = [i for i, m in zip(self.ids, mask) if m]
        self.inactive, self.active = self.inactive[mask], self.active[mask]
        self.proof, self.eps = self.proof[mask], self.eps[mask]

    @property
    def affine(self) -> bool:
        """No unstable neuron: the layer's output is an affine function of its input on the domain."""
        return self.act == LINEAR or bool(np.all(self.active))


class _Folder:
    """LEO++ on the dense layers ``net.layers[start:]`` (a convolutional prefix before them is
    :class:`_ConvPrefix`'s)."""

    def __init__(self, net: Network, st: StabilityState, start: int = 0):
        self.layers: list[_Layer] = []
        for k, l in enumerate(net.layers):
            if k < start:
                continue
            hidden = k < len(net.layers) - 1 and l.is_relu
            self.layers.append(_Layer(
                l.weight.copy(), l.bias.copy(), l.activation, list(l.neuron_ids), l.layer_id, l.source,
                st.proven_inactive[k].copy() if hidden else np.zeros(l.n_out, bool),
                (st.proven_active[k] & ~st.proven_inactive[k]).copy() if hidden else np.zeros(l.n_out, bool),
                st.proof[k].copy(), st.epsilon[k].copy()))
        self.removed: list[dict] = []
        self.folded_layers: list[dict] = []

    def log(self, layer: _Layer, idx, state: str, proof: str, eps=None) -> None:
        for i in np.atleast_1d(idx):
            self.removed.append({"layer": layer.layer_id, "neuron": layer.ids[int(i)], "state": state,
                                 "proof": proof if proof else str(layer.proof[int(i)]),
                                 "epsilon": float(layer.eps[int(i)] if eps is None else eps)})

    def hidden(self):
        return range(len(self.layers) - 1)

    # ---- rewrites ----------------------------------------------------------------------------
    def drop_inactive(self) -> bool:
        changed = False
        for k in self.hidden():
            lay, nxt = self.layers[k], self.layers[k + 1]
            gone = np.flatnonzero(lay.inactive)
            if gone.size:
                self.log(lay, gone, "stably_inactive", "")
                keep = ~lay.inactive
                lay.keep(keep, nxt)
                changed = True
        return changed

    def drop_constant_and_unused(self) -> bool:
        changed = False
        for k in self.hidden():
            lay, nxt = self.layers[k], self.layers[k + 1]
            if lay.w.shape[0] == 0:
                continue
            const = np.flatnonzero(~lay.w.any(axis=1))
            unused = np.flatnonzero(~nxt.w.any(axis=0))
            if const.size:
                value = np.maximum(lay.b[const], 0.0) if lay.act == RELU else lay.b[const]
                nxt.b = nxt.b + nxt.w[:, const] @ value
                self.log(lay, const, "constant", "zero incoming weights", eps=0.0)
            rest = np.setdiff1d(unused, const)
            if rest.size:
                self.log(lay, rest, "unused", "zero outgoing weights", eps=0.0)
            gone = np.union1d(const, unused)
            if gone.size:
                keep = np.ones(lay.w.shape[0], bool)
                keep[gone] = False
                lay.keep(keep, nxt)
                changed = True
        return changed

    def reduce_active_rank(self) -> bool:
        changed = False
        for k in self.hidden():
            lay, nxt = self.layers[k], self.layers[k + 1]
            if lay.affine:
                continue  # the whole layer folds instead
            s = np.flatnonzero(lay.active)
            if s.size < 2:
                continue
            ws = lay.w[s]
            # Greedy basis of the rows of W_S: QR with column pivoting on W_S^T.
            diag, piv = pivoted_qr(ws.T)  # numpy for small layers: scipy costs a tenth of a second to import
            if diag.size == 0 or diag[0] == 0:
                continue
            rank = int(np.sum(diag > diag[0] * max(ws.shape) * np.finfo(float).eps * 16))
            if rank >= s.size:
                continue
            basis, dep = s[np.sort(piv[:rank])], s[np.sort(piv[rank:])]
            k_mat, *_ = np.linalg.lstsq(lay.w[basis].T, lay.w[dep].T, rcond=None)
            k_mat = k_mat.T  # W_D ~= K W_B
            resid = np.abs(lay.w[dep] - k_mat @ lay.w[basis]).max()
            scale = np.abs(lay.w[s]).max()
            if resid > RANK_TOL * max(scale, 1e-300):
                continue
            nxt.b = nxt.b + nxt.w[:, dep] @ (lay.b[dep] - k_mat @ lay.b[basis])
            nxt.w[:, basis] += nxt.w[:, dep] @ k_mat
            self.log(lay, dep, "stably_active", "rank")
            keep = np.ones(lay.w.shape[0], bool)
            keep[dep] = False
            lay.keep(keep, nxt)
            changed = True
        return changed

    def fold_affine_layers(self) -> bool:
        for k in self.hidden():
            lay, nxt = self.layers[k], self.layers[k + 1]
            if not lay.affine:
                continue
            n_prev, n_mid, n_next = lay.w.shape[1], lay.w.shape[0], nxt.w.shape[0]
            before = n_mid * (n_prev + 1) + n_next * (n_mid + 1)
            after = n_next * (n_prev + 1)
            if after <= before:
                for i in range(n_mid):
                    self.log(lay, i, "stably_active" if lay.act == RELU else "linear",
                             "" if lay.act == RELU else "linear layer folded")
                self.folded_layers.append({"layer": lay.layer_id, "into": nxt.layer_id})
                nxt.b = nxt.b + nxt.w @ lay.b
                nxt.w = nxt.w @ lay.w
                del self.layers[k]
                return True
            if lay.act == RELU:
                lay.act = LINEAR  # ReLU is the identity on the domain for every neuron left
                return True
        return False

    def run(self) -> None:
        self.drop_inactive()
        while True:
            if self.drop_constant_and_unused() or self.reduce_active_rank() or self.fold_affine_layers():
                continue
            break

    def network(self, net: Network, prefix: tuple = ()) -> tuple[Network, bool]:
        if not self.layers:  # a network of convolutions only
            return Network(tuple(prefix), net.input_size, net.onnx, dict(net.meta)), False
        last = self.layers[-1]
        if last.w.shape[1] == 0:  # every path to the output was cut: the function is a constant
            const = Dense(np.zeros((last.w.shape[0], net.input_size)), last.b, last.act, last.layer_id, last.ids,
                          last.source)
            return Network((const,), net.input_size, net.onnx, dict(net.meta)), True
        dense = [Dense(l.w, l.b, l.act, l.layer_id, l.ids, l.source) for l in self.layers]
        return Network(tuple(prefix) + tuple(dense), net.input_size, net.onnx, dict(net.meta)), False


class _ConvPrefix:
    """The exact rewrites of a convolutional prefix ``net.layers[:start]`` (every layer a ``Conv``), given
    the stability of its units, before LEO++ folds the dense head (``head``, a :class:`_Folder`):

    * a unit is *constant* on the domain when it is a ReLU unit proven stably inactive (value 0), or every
      kernel tap of it reads a constant unit (value: the convolution of those constants plus its bias;
      e.g. an average pool of dead units);
    * a channel whose every output unit is constant 0 is removed from its layer, together with the
      matching input channel of the next convolution (a run of depthwise layers such as pooling between
      them loses the channel too, when it is constant 0 there as well);
    * the last convolution's constant units are folded into the head's bias and their columns removed;
      the layer then emits only the units the head reads (the writer's Gather after the Flatten).
    Stably active units are kept: folding them would turn a convolution into a dense map."""

    def __init__(self, net: Network, st: StabilityState, start: int, folder: "_Folder"):
        self.layers = list(net.layers[:start])
        self.folder = folder
        # zero columns stay small in the file only where the writer's compact storage may be used
        from .storage import DECODER_OPSET

        model = getattr(net.onnx, "model", None)
        opset = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [0]) if model else 99
        self.zero_columns_cheap = opset >= DECODER_OPSET
        self.channels_removed: dict = {}
        self.folded_cols = np.zeros(self.layers[-1].n_out, bool)  # last layer's units folded into the head
        self.inactive = [st.proven_inactive[k] & self.layers[k].is_relu for k in range(start)]
        self.proof = [np.asarray(st.proof[k]).copy() for k in range(start)]
        self.eps = [np.asarray(st.epsilon[k], dtype=np.float64).copy() for k in range(start)]
        self.const: list[np.ndarray] = []
        self.value: list[np.ndarray] = []
        in_const, in_val = np.zeros(net.input_size, bool), np.zeros(net.input_size)
        for k, layer in enumerate(self.layers):
            reads_live = np.asarray(layer.weight_abs @ (~in_const).astype(np.float64)).reshape(-1) > 0
            pre_const = ~reads_live
            pre_val = np.asarray(layer.weight @ np.where(in_const, in_val, 0.0)).reshape(-1) + layer.bias
            if layer.is_relu:
                inactive = self.inactive[k]
                const = inactive | pre_const
                val = np.where(inactive, 0.0, np.maximum(pre_val, 0.0))
            else:
                const, val = pre_const, pre_val
            self.const.append(const)
            self.value.append(np.where(const, val, 0.0))
            in_const, in_val = const, self.value[-1]

    def log(self, k: int, units: np.ndarray, why: str, state: str = "constant") -> None:
        """Removal entries for ``units`` of layer ``k``: a proven inactive unit with its proof, any other
        with ``state`` and ``why``."""
        layer = self.layers[k]
        for i in units:
            inactive = bool(self.inactive[k][i])
            self.folder.removed.append({
                "layer": layer.layer_id, "neuron": int(layer.neuron_ids[i]),
                "unit": layer.unit_label(layer.neuron_ids[i]),
                "state": "stably_inactive" if inactive else state,
                "proof": str(self.proof[k][i]) if inactive else why,
                "epsilon": float(self.eps[k][i]) if inactive else 0.0})

    def _channel_units(self, k: int) -> np.ndarray:
        """Channel (position in the layer) of every emitted unit of layer ``k``."""
        layer = self.layers[k]
        return layer.emitted // (layer.out_hw[0] * layer.out_hw[1])

    def _dead(self, k: int, groups: int) -> np.ndarray:
        """Per group of ``groups`` equal blocks of layer ``k``'s output channels: every emitted unit of the
        block is constant 0."""
        layer, ch = self.layers[k], self._channel_units(k)
        zero = self.const[k] & (self.value[k] == 0.0)
        live = np.bincount(ch[~zero], minlength=layer.out_channels) > 0
        return ~live.reshape(groups, -1).any(axis=1)

    def remove_dead_channels(self) -> None:
        """Producer ``k`` (a convolution of group 1), the grouped layers right after it that keep its
        channels apart (pooling, scale, the layers of a MaxPool: one group per channel of ``k``), and the
        consumer ``j`` (a convolution of group 1, or the dense head): a channel of ``k`` constant 0 all along
        ``k..j-1`` goes from each of them and from ``j``'s input."""
        n, k = len(self.layers), 0
        while k < n:
            channels = self.layers[k].out_channels
            j = carrier_end(self.layers, k)
            consumer_ok = self.layers[j].group == 1 if j < n else bool(self.folder.layers)
            if self.layers[k].group == 1 and consumer_ok:
                dead = np.logical_and.reduce([self._dead(m, channels) for m in range(k, j)])
                if dead.all():  # a layer keeps one channel (the rest of the network reads constants then)
                    dead[0] = False
                if dead.any():
                    keep = ~dead
                    for m in range(k, j):
                        per_channel = carried_mask(self.layers[m], keep, channels)
                        chan = self._channel_units(m)
                        self.log(m, np.flatnonzero(~per_channel[chan]), "inputs proven constant")
                        self._keep(m, per_channel[chan], per_channel)
                    if j < n:
                        per_input = np.repeat(keep, self.layers[j].in_shape[0] // channels)
                        self.layers[j] = self.layers[j].keep_input_channels(per_input)
                    lid = self.layers[k].layer_id
                    self.channels_removed[lid] = self.channels_removed.get(lid, 0) + int(dead.sum())
            k = j

    def _keep(self, k: int, unit_mask: np.ndarray, channel_mask: np.ndarray) -> None:
        """Layer ``k`` keeps the channels in ``channel_mask``; its per-unit facts follow; the head's columns
        follow when it is the last convolution."""
        self.layers[k] = self.layers[k].keep_channels(channel_mask)
        self.st_rows(k, unit_mask)
        if k == len(self.layers) - 1 and self.folder.layers:
            head = self.folder.layers[0]
            head.w = head.w[:, unit_mask]

    def st_rows(self, k: int, mask: np.ndarray) -> None:
        """The per-unit facts of layer ``k`` for the units in ``mask`` only (after the layer lost the others)."""
        for arr in (self.const, self.value, self.inactive, self.proof, self.eps):
            arr[k] = arr[k][mask]

    def fold_into_head(self) -> None:
        """The last convolution's constant units: into the head's bias, their columns zeroed."""
        k = len(self.layers) - 1
        if k < 0 or not self.folder.layers:
            return
        head, const = self.folder.layers[0], self.const[k]
        self.folded_cols = const.copy()
        if not const.any():
            return
        head.b = head.b + head.w[:, const] @ self.value[k][const]
        head.w = head.w.copy()
        head.w[:, const] = 0.0
        self.log(k, np.flatnonzero(const), "inputs proven constant")

    def drop_units(self, k: int, keep: np.ndarray) -> None:
        head = self.folder.layers[0]
        head.w = head.w[:, keep]
        self.layers[k] = self.layers[k].keep_units(keep)
        self.st_rows(k, keep)

    def drop_unread(self) -> None:
        """Units of the last convolution that the folded head no longer reads (all-zero columns): out of the
        layer's output (the writer's Gather after the Flatten) when that saves at least
        :data:`GATHER_MIN_MACS` of the head's multiply-accumulates, or when the model's opset is too old for
        the writer's compact storage; else left as zero columns, which that storage keeps small and
        onnxruntime multiplies faster than it gathers."""
        k = len(self.layers) - 1
        if k < 0 or not self.folder.layers or self.folder.layers[0].w.shape[1] != self.layers[k].n_out:
            return
        head = self.folder.layers[0]
        unread = ~head.w.any(axis=0)
        self.log(k, np.flatnonzero(unread & ~self.folded_cols), "zero outgoing weights", state="unused")
        if unread.any() and (not self.zero_columns_cheap or int(unread.sum()) * head.w.shape[0] >= GATHER_MIN_MACS):
            self.drop_units(k, ~unread)


GATHER_MIN_MACS = 100_000
"""A Gather of the head's inputs costs onnxruntime about what 30,000 multiply-accumulates of the head's Gemm
do (batch 1, one thread: 3 µs on the Transpose-head MNIST fixture, where the Gather made the model 17 %
slower than keeping zero columns); below this many saved MACs the columns stay, as zeros."""


def epsilon_error_bound(net: Network, st: StabilityState) -> float:
    """Worst-case |output change| caused by removals certified with a margin epsilon > 0.

    A neuron proven stably inactive up to eps contributes at most eps to its layer's output, one
    proven stably active up to eps at most eps (``relu(y) - y <= eps``); the perturbation is pushed
    through ``|W|`` of the later layers (ReLU is 1-Lipschitz)."""
    delta = np.zeros(net.input_size)
    for k, layer in enumerate(net.layers):
        pre = np.asarray(layer.weight_abs @ delta).reshape(-1)
        if k == len(net.layers) - 1:
            return float(pre.max(initial=0.0))
        certified = st.proven_inactive[k] | st.proven_active[k]
        delta = pre + np.where(certified, st.epsilon[k], 0.0)
    return 0.0


def stability_report(net: Network, st: StabilityState, removed: list, folded: list, solver_info: dict) -> dict:
    layers = []
    for k, layer in enumerate(net.layers[:-1]):
        ids = np.asarray(layer.neuron_ids)
        unstable = st.seen_active[k] & st.seen_inactive[k]
        layers.append({
            "layer": layer.layer_id,
            # a MaxPool's parts are layers of their own here: "maxpool", with the pooling's part number
            **({"kind": "maxpool" if layer.pool else "conv", "shape": list(layer.out_shape),
                **({"part": f"{layer.pool[0] + 1} of {layer.pool[1]}"} if layer.pool else {})}
               if is_conv(layer) else {}),
            "activation": layer.activation,
            "width": layer.n_out,
            "inactive": ids[st.proven_inactive[k]].tolist() if layer.is_relu else [],
            "active": ids[st.proven_active[k] & ~st.proven_inactive[k]].tolist() if layer.is_relu else [],
            "undecided": ids[st.undecided(k)].tolist() if layer.is_relu else [],
            "unstable": int(unstable.sum()) if layer.is_relu else 0,
        })
    for entry in removed:
        entry.update(solver_info if entry["proof"] == "milp" else {})
    totals = st.counts(net)
    totals["removed_neurons"] = sum(1 for r in removed)
    return {"layers": layers, "removed": removed, "folded_layers": folded, "totals": totals,
            "epsilon_error_bound": epsilon_error_bound(net, st), "conflicts": [
                {"layer": net.layers[k].layer_id, "neuron": net.layers[k].neuron_ids[i]} for k, i in st.conflicts]}


def fold(net: Network, st: StabilityState, solver_info: dict | None = None) -> tuple[Network, dict]:
    """``net`` with every rewrite ``st`` allows applied, and the ``stable`` report block (per layer the
    stably inactive, active and undecided neurons, every removal with its proof, folded layers, totals,
    ``epsilon_error_bound``; ``constant`` when the network became a constant on the domain).
    ``solver_info`` (solver, status, ...) is added to the removals a MILP certified."""
    start = 1 + max((k for k, layer in enumerate(net.layers) if is_conv(layer)), default=-1)
    folder = _Folder(net, st, start)
    prefix = _ConvPrefix(net, st, start, folder) if start else None
    if prefix is not None:
        prefix.remove_dead_channels()
        prefix.fold_into_head()
    if folder.layers:
        folder.run()
    if prefix is not None:
        prefix.drop_unread()
    new, constant = folder.network(net, prefix.layers if prefix is not None else ())
    report = stability_report(net, st, folder.removed, folder.folded_layers, solver_info or {})
    if prefix is not None:
        for entry in report["layers"]:
            if entry["layer"] in prefix.channels_removed:
                entry["channels_removed"] = prefix.channels_removed[entry["layer"]]
    if constant:
        report["constant"] = True
    return new, report
