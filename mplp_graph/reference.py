"""Load the authors' published learners (their ``mplp/savedmodels/*.npy``) into the engine's
parameters.

Each published file is one flat float32 vector whose layout follows the order in which the
reference network was built (the authors' ``tf_layers.py`` ``MPNetwork.save_weights`` flattens
the weights and stores nothing about the layout): per layer in network order, then the loss,
then the shared networks. For a dense layer, the weight learner's record then the bias learner's; each is

* stateful, not shared: standardizer norms (one per input kind), means (stored negated), the
  GRU (``W_update_x, W_update_c, b_update, W_reset_x, W_reset_c, b_reset, b_next``, then the two
  MLPs' ``k1 b1 k2 b2 k3``), ``out_scale``, ``out_mean``;
* stateful, shared: norms, means, ``out_scale``, ``out_mean`` (the GRUs come at the end);
* stateless: norms, means, f (``k1 b1 k2 b2 k3 b3``), ``out_scale``, ``out_mean``, g.

Activation, softmax and loss learners: norms, means, then the GRU (or g).
Every segment is checked; a file that does not match the graph is refused with the expected and
found sizes, never partially loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mplp_graph.errors import MplpGraphError
from mplp_graph.runtime.program import Program

GRU_ORDER = ("W_update_x", "W_update_c", "b_update", "W_reset_x", "W_reset_c", "b_reset", "b_next")
MLP_GRU_ORDER = ("k1", "b1", "k2", "b2", "k3")
MLP_ORDER = ("k1", "b1", "k2", "b2", "k3", "b3")


class ReferenceFormatError(MplpGraphError):
    """A published learner file does not match the graph it is loaded into."""


class _Reader:
    def __init__(self, flat: np.ndarray, path: str):
        self.flat, self.pos, self.path = flat, 0, path

    def take(self, shape: tuple[int, ...], what: str) -> np.ndarray:
        n = int(np.prod(shape))
        if self.pos + n > self.flat.size:
            raise ReferenceFormatError(
                f"{self.path}: the file ends at {self.flat.size:,} floats, but {what} needs {n:,} more from offset "
                f"{self.pos:,}; the file was written for a different graph (message size, hidden size, sharing?)"
            )
        out = self.flat[self.pos : self.pos + n].reshape(shape)
        self.pos += n
        return out

    def like(self, template: Any, order: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
        return {k: self.take(np.shape(template[k]), f"{what}/{k}") for k in order}


def _reference_records(prog: Program) -> list[tuple[str, str]]:
    """``(arrow, role)`` in the file's order: layers, then loss, then shared networks."""
    arrows = {p.name: p for p in prog.plans}
    spec = prog.spec
    n_dense = sum(1 for g in spec.groups.values() if g.kind == "weight")
    records: list[tuple[str, str]] = []
    for l in range(n_dense):
        w_arrow = f"W{l}->a{l - 1}" if l > 0 else "W0.learn"
        records += [(w_arrow, "param"), (f"b{l}->W{l}", "param")]
        if l < n_dense - 1:
            records.append((f"a{l}->b{l}", "node"))
    last_b = f"b{n_dense - 1}"
    if "softmax" in spec.groups:
        records += [(f"softmax->{last_b}", "node"), ("loss->softmax", "node")]
    else:
        records.append((f"loss->{last_b}", "node"))
    missing = [a for a, _ in records if a not in arrows]
    if missing:
        raise ReferenceFormatError(f"the graph has no learner arrows {missing}; build it with templates.mplp.mplp_feedforward")
    return records


def load_reference_learner(path: str | Path, prog: Program, params: Any | None = None) -> Any:
    """Parameters for ``prog`` (an :func:`mplp_feedforward` graph) from a published flat file."""
    path = str(path)
    flat = np.load(path, allow_pickle=False)
    if flat.ndim != 1 or flat.dtype != np.float32:
        raise ReferenceFormatError(f"{path}: expected a flat float32 vector, found {flat.dtype} of shape {flat.shape}")
    template = params if params is not None else prog.init_params(jax.random.PRNGKey(0))
    out = {k: dict(v) for k, v in template.items()}
    plans = {p.name: p for p in prog.plans}
    r = _Reader(flat, path)
    shared_nets: list[str] = []
    for arrow, role in _reference_records(prog):
        plan = plans[arrow]
        keys = dict(plan.share)
        stateful = plan.op.name == "mplp_gru"
        norm_t = out[keys["norm"]]["norm"]
        n = norm_t["in_norm"].shape[0]
        norm = dict(norm_t)
        norm["in_norm"] = r.take((n,), f"{arrow}/in_norm")
        norm["in_mean"] = -r.take((n,), f"{arrow}/in_mean")  # core.py StandardizeInputsAndStates stores -mean
        if stateful:
            net_key = keys["net"]
            if net_key == arrow:  # per-tensor learner: its GRU follows its statistics
                out[net_key]["net"] = _read_gru(r, out[net_key]["net"], arrow)
            elif net_key not in shared_nets:
                shared_nets.append(net_key)
        else:
            if role == "param":
                out[keys["f"]]["f"] = r.like(out[keys["f"]]["f"], MLP_ORDER, f"{arrow}/f")
        if role == "param":
            norm["out_scale"] = r.take((), f"{arrow}/out_scale")
            norm["out_mean"] = r.take((), f"{arrow}/out_mean")
        if not stateful:
            out[keys["g"]]["g"] = r.like(out[keys["g"]]["g"], MLP_ORDER, f"{arrow}/g")
        out[keys["norm"]]["norm"] = norm
    for net_key in shared_nets:  # shared GRUs come last, W before b (dict insertion order)
        out[net_key]["net"] = _read_gru(r, out[net_key]["net"], net_key)
    if r.pos != flat.size:
        raise ReferenceFormatError(
            f"{path}: the graph's learners use {r.pos:,} floats but the file has {flat.size:,}; "
            "it was written for a different graph"
        )
    return jax.tree_util.tree_map(jnp.asarray, out)


def _read_gru(r: _Reader, template: dict[str, Any], what: str) -> dict[str, Any]:
    net = r.like(template, GRU_ORDER, f"{what}/gru")
    net["next_x_net"] = r.like(template["next_x_net"], MLP_GRU_ORDER, f"{what}/gru/next_x_net")
    net["next_c_net"] = r.like(template["next_c_net"], MLP_GRU_ORDER, f"{what}/gru/next_c_net")
    return net


def load_reference_prior(path: str | Path, prog: Program) -> dict[str, dict[str, Any]]:
    """The MAML+MPLP learned prior ``[W0, b0, W1, b1, W2, b2]`` as agent parameters."""
    path = str(path)
    flat = np.load(path, allow_pickle=False)
    r = _Reader(flat, path)
    spec = prog.spec
    n_dense = sum(1 for g in spec.groups.values() if g.kind == "weight")
    prior: dict[str, dict[str, Any]] = {}
    for l in range(n_dense):
        prior[f"W{l}"] = {"w": jnp.asarray(r.take(spec.groups[f"W{l}"].shape, f"W{l}"))}
        prior[f"b{l}"] = {"b": jnp.asarray(r.take(spec.groups[f"b{l}"].shape, f"b{l}"))}
    if r.pos != flat.size:
        raise ReferenceFormatError(f"{path}: the prior uses {r.pos:,} floats but the file has {flat.size:,}")
    return prior
