"""The engine's variant of the Growing NCA training step: graphs/growing_nca.yaml compiled by
the engine and rolled out by its rollout trainer (:class:`mplp_graph.meta.rollout.RolloutStep`,
what ``mplp-graph train experiments/nca/config.yaml`` runs), behind the signature and parameter
layout of benchmarks/nca_direct.py, so that the benchmark row ``nca_train_step`` times the three
variants through the same optimiser step.

Two things differ between the layouts and are mapped here, outside the timed model:

* the update rule's first layer: the engine's ``residual_mlp`` reads its inputs ``[s, gx, gy]``
  concatenated (row ``k * 16 + c`` for kernel ``k``, channel ``c``), nca_direct's perception is
  channel-major (row ``c * 3 + k``); :func:`to_engine` permutes the rows (differentiable, so the
  gradients come back in nca_direct's layout);
* the random draws: the engine draws which cells fire from each example's ``schedule.rng``
  counter (mplp_graph/runtime/draws.py); :func:`engine_fire` gives nca_direct those same masks, so
  that the direct model can be checked equal to the engine's step.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from benchmarks import nca_direct as nd

GRAPH = Path(__file__).resolve().parents[1] / "graphs" / "growing_nca.yaml"


@functools.lru_cache(maxsize=None)
def program(height: int, width: int):
    """graphs/growing_nca.yaml with an ``height x width`` grid, compiled."""
    import mplp_graph as mg

    text = GRAPH.read_text().replace("shape: [72, 72]", f"shape: [{height}, {width}]")
    return mg.compile_graph(mg.loads_graph(text, filename=str(GRAPH)))


def to_engine(params: dict) -> dict:
    """nca_direct's ``{w1, b1, w2}`` as the engine's ``{"rule": {w1, b1, w2}}`` (module docstring)."""
    w1 = params["w1"].reshape(nd.CHANNELS, nd.KERNELS, -1).transpose(1, 0, 2).reshape(nd.PERCEPTION, -1)
    return {"rule": {"w1": w1, "b1": params["b1"], "w2": params["w2"]}}


def counters(key: jax.Array, batch: int) -> jax.Array:
    """Each example's starting ``schedule.rng`` counter, drawn as the rollout trainer draws them."""
    return jax.random.randint(key, (batch,), 0, jnp.iinfo(jnp.int32).max)


def engine_fire(key: jax.Array, t, shape: tuple[int, ...]) -> jax.Array:
    """The cells the engine's step ``t`` fires, for examples whose counters :func:`counters`
    draws from ``key``: ``(B, H, W, 1)`` bool, a drop-in for :func:`nca_direct.fire_mask`."""
    from mplp_graph.runtime import draws

    batch, height, width = shape[0], shape[-3], shape[-2]
    prog = program(height, width)
    phase, group = list(prog.phases).index("update"), list(prog.spec.groups).index("cell")
    keys = draws.phase_key(counters(key, batch) + t, phase, 0)  # one key per example
    return draws.fire_mask(keys, 0, group, (height, width), prog.spec.schedule.random["update"].fire)[..., None]


def loss_and_states(params: dict, x0: jax.Array, target: jax.Array, key: jax.Array, steps: int) -> tuple[jax.Array, jax.Array]:
    """nca_direct.loss_and_states computed by the engine: the rollout trainer's
    ``final_states`` (the batch as one batch of the graph, each example with its own counter)
    for ``steps`` steps."""
    from mplp_graph.meta.rollout import RolloutStep

    batch = x0.shape[0]
    trainer = RolloutStep(program(*x0.shape[1:3]), ("cell", "s"), 4, (steps, steps), batch, optax.identity())
    drawn = {"x": x0[:, None], "n": jnp.asarray(steps), "counters": counters(key, batch)}
    x = trainer.final_states(to_engine(params), drawn)[:, 0]
    return jnp.mean(jnp.square(x[..., :4] - target)), x
