"""Statistics of the standardizers from an initialisation rollout (the authors' ``tf_layers.py``
``MPNetwork.minibatch_init`` and ``update_statistics``).

J rounds; each takes a fresh prior and one task, runs K inner steps with *online*
standardization (statistics measured on the current tensors and used at once) and the untrained
learners, which do update the net (the authors' ``MPDense.backward_init`` returns the updated
weights and biases, although its base class's docstring says it should not); the per-step
statistics are averaged over the K steps (the norm averages 1/std) and mixed into the stored
ones with weight p: ``v <- (1 - p) v + p avg``. The statistics are frozen afterwards.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mplp_graph import xla
from mplp_graph.runtime.program import Program, compile_graph
from mplp_graph.ir.spec import GraphSpec
from mplp_graph.runtime.state import with_agent_params, zeros_state

LEARNER_OPS = ("mplp_gru", "mplp_mlp")
STAT_NAMES = {"side_in_mean": "in_mean", "side_in_norm": "in_norm", "side_out_mean": "out_mean"}


def with_standardize(spec: GraphSpec, mode: str) -> GraphSpec:
    """The same graph with every learner's ``standardize`` argument set to ``mode``."""
    arrows = []
    for a in spec.arrows:
        if a.op.name in LEARNER_OPS:
            a = a.model_copy(update={"op": a.op.model_copy(update={"args": {**a.op.args, "standardize": mode}})})
        arrows.append(a)
    return spec.model_copy(update={"arrows": tuple(arrows)})


def norm_keys(prog: Program) -> dict[str, str]:
    """Arrow name -> the share key of its standardizer."""
    return {p.name: dict(p.share)["norm"] for p in prog.plans if p.op.name in LEARNER_OPS}


def rollout_stats(prog_online: Program, params: Any, prior: Any, xt: Any, yt: Any) -> dict[str, dict[str, Any]]:
    """One round: K steps with online statistics; returns ``{arrow: {stat: mean over steps}}``."""
    state = with_agent_params(zeros_state(prog_online.spec, xt.shape[1]), prior)

    def body(state, xy):
        state, _, side = prog_online.step_with_side(params, state, {"x": xy[0], "y": xy[1]})
        return state, side

    _, side = jax.lax.scan(body, state, (xt, yt))
    return jax.tree_util.tree_map(lambda v: jnp.mean(v, axis=0), side)


def init_statistics(
    prog: Program,
    params: Any,
    sample_round: Callable[[Any], tuple[Any, Any, Any]],
    key: Any,
    rounds: int = 1,
    mix: float = 1.0,
) -> Any:
    """Return ``params`` with every standardizer's statistics set from ``rounds`` rollouts.

    ``sample_round(key) -> (prior, xt (K, B, ...), yt)`` draws one round's prior and task."""
    online = compile_graph(with_standardize(prog.spec, "online"))
    run = xla.jit(lambda p, prior, xt, yt: rollout_stats(online, p, prior, xt, yt))
    keys = norm_keys(prog)
    params = {k: dict(v) for k, v in params.items()}  # new containers: the caller's stay untouched
    for j in range(rounds):
        prior, xt, yt = sample_round(jax.random.fold_in(key, j))
        # the mixing is a few float32 operations per statistic: done in numpy (same IEEE
        # arithmetic), not as one small XLA program compiled per shape
        side = jax.device_get(run(params, prior, xt, yt))
        by_key: dict[str, list[dict[str, Any]]] = {}
        for arrow, stats in side.items():
            by_key.setdefault(keys[arrow], []).append(stats)
        for nkey, items in by_key.items():
            norm = dict(params[nkey]["norm"])
            for side_name, name in STAT_NAMES.items():
                vals = [s[side_name] for s in items if side_name in s]
                if vals and name in norm:
                    avg = sum(vals) / len(vals)  # arrows sharing one standardizer pool their statistics
                    norm[name] = jnp.asarray((1.0 - mix) * np.asarray(norm[name]) + mix * avg)
            params[nkey] = {**params[nkey], "norm": norm}
    return params
