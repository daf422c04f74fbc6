"""Training a graph's own parameters by backpropagation through a rollout: learned cellular
automata (Mordvintsev, Randazzo, Niklasson, Levin, "Growing Neural Cellular Automata", Distill
2020; docs/nca.md).

Where an MPLP meta-step (:class:`mplp_graph.meta.step.MetaStep`) trains learners that update a
net's parameters inside an inner loop, a rollout step trains the parameters of the graph's ops
(e.g. the ``residual_mlp`` update rule of graphs/growing_nca.yaml) directly: run the graph for
``n`` steps (``n`` drawn from ``[min, max]`` at every training step), compare a field of the
final state with a target, backpropagate through all ``n`` steps. It follows the article's
training recipe:

* a **sample pool** of states: each training step draws ``outer_batch`` states from the pool,
  replaces the one farthest from the target with the seed (a single live cell), optionally
  damages the ``damage`` closest ones (a random disc erased), rolls them out, and writes the
  final states back into the pool. The pool is training state: :func:`meta_train` carries it
  from step to step and stores it in checkpoints (exact resume);
* every example has its own random draws (which cells fire): the rollout is vmapped over the
  examples, each with its own ``schedule.rng`` counter, drawn at random when the state is drawn;
* the outer update is the one of every step function (:func:`mplp_graph.meta.step.outer_update`):
  the gradient normalised per parameter leaf, then Adam, as the article's training loop does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mplp_graph.ir.spec import GraphSpec
from mplp_graph.meta.step import StepFunction, outer_update
from mplp_graph.runtime import draws
from mplp_graph.runtime.program import Program


def rollout(prog: Program, params: Any, carry: Any, n: Any, n_max: int, remat: bool = False, n_min: int = 0) -> Any:
    """``n`` steps of ``prog`` from ``carry`` (persistent fields, :meth:`Program.step_carry`),
    ``n`` a traced integer with ``n_min <= n <= n_max``: a scan of the ``n_min`` steps that
    always run, then a scan of ``n_max - n_min`` iterations whose steps past ``n`` are skipped
    (``lax.cond``: neither they nor their gradients are computed; a conditional costs ~15 % of
    a Growing NCA step's value and gradient, so the steps that always run go without one).
    ``remat``: recompute each step in the backward pass instead of storing it."""

    def always(c, _):
        return prog.step_carry(params, c, {})[0], None

    def maybe(c, i):
        return jax.lax.cond(i < n, lambda c: prog.step_carry(params, c, {})[0], lambda c: c, c), None

    wrap = jax.checkpoint if remat else (lambda f: f)
    if n_min > 0:
        carry = jax.lax.scan(wrap(always), carry, None, length=n_min)[0]
    if n_max > n_min:
        carry = jax.lax.scan(wrap(maybe), carry, jnp.arange(n_min, n_max))[0]
    return carry


def disc_masks(key: Any, n: int, shape: tuple[int, int]) -> Any:
    """``n`` masks of ``shape``: 0 inside a random disc (centre in the middle half of the grid,
    radius 0.1-0.4 of its half-size; the article's ``make_circle_masks``), 1 outside. float32[n, H, W]"""
    kc, kr = jax.random.split(key)
    ys = jnp.linspace(-1.0, 1.0, shape[0])[None, :, None]
    xs = jnp.linspace(-1.0, 1.0, shape[1])[None, None, :]
    centre = jax.random.uniform(kc, (n, 2), minval=-0.5, maxval=0.5)
    radius = jax.random.uniform(kr, (n, 1, 1), minval=0.1, maxval=0.4)
    d2 = (ys - centre[:, 0, None, None]) ** 2 + (xs - centre[:, 1, None, None]) ** 2
    return (d2 >= radius**2).astype(jnp.float32)


@dataclass(frozen=True)
class RolloutStep(StepFunction):
    """One training step of a learned cellular automaton (module docstring).

    ``target``: ``(group, field)`` whose first ``channels`` channels are compared with the target
    image (``data["target"]``, ``(*grid, channels)``); ``data["seed"]``: the seed state of that
    field (``(1, *grid, features)``). ``steps``: the rollout length's range, both ends included."""

    prog: Program
    target: tuple[str, str]
    channels: int
    steps: tuple[int, int]
    outer_batch: int
    optimizer: optax.GradientTransformation
    damage: int = 0
    remat: bool = False
    compiler_options: tuple = ()
    carries_pool = True  # __call__ returns the updated pool (meta_train carries and checkpoints it)

    def __post_init__(self):
        lo, hi = self.steps
        if not 1 <= lo <= hi:
            raise ValueError(f"steps must be a range [min, max] with 1 <= min <= max, got {list(self.steps)}")
        if not 0 <= self.damage < self.outer_batch:
            raise ValueError(f"damage ({self.damage}) must be below the outer batch ({self.outer_batch}): the seed takes one place")

    @property
    def graph(self) -> GraphSpec:
        return self.prog.spec

    # -- the pool ---------------------------------------------------------------------------

    def init_pool(self, seed: Any, size: int) -> Any:
        """``size`` copies of the seed: ``{group: {field: (size, 1, *grid, features)}}``."""
        g, f = self.target
        return {g: {f: jnp.broadcast_to(seed, (size, *seed.shape))}}

    def loss_of(self, states: Any, target: Any) -> Any:
        """Per-example mean squared difference of the compared channels and the target. float32[N]"""
        x = states[..., : self.channels]
        return jnp.mean((x - target) ** 2, axis=tuple(range(1, x.ndim)))

    # -- the step -----------------------------------------------------------------------------

    def draw(self, params: Any, pool: Any, key: Any, data: Any) -> dict[str, Any]:
        g, f = self.target
        k_idx, k_dmg, k_n, k_t = jax.random.split(key, 4)
        size = pool[g][f].shape[0]
        idx = jax.random.choice(k_idx, size, (self.outer_batch,), replace=False)
        x = pool[g][f][idx]  # (B, 1, *grid, F)
        order = jnp.argsort(-self.loss_of(x[:, 0], data["target"]))  # farthest from the target first
        idx, x = idx[order], x[order]
        x = x.at[0].set(data["seed"])  # the worst sample starts again from the seed
        if self.damage:
            masks = disc_masks(k_dmg, self.damage, x.shape[2:4])[:, None, :, :, None]
            x = x.at[-self.damage :].multiply(masks)  # the closest ones lose a disc
        n = jax.random.randint(k_n, (), self.steps[0], self.steps[1] + 1)
        # each example's own schedule.rng counter (its own random draws)
        counters = jax.random.randint(k_t, (self.outer_batch,), 0, jnp.iinfo(jnp.int32).max)
        return {"idx": idx, "x": x, "n": n, "counters": counters, "target": data["target"]}

    @property
    def per_example_counter(self) -> bool:
        """Whether the graph's ``schedule.rng`` counter is batched (one per example): then the
        batch runs as one batch of the graph, else each example runs alone under ``vmap`` with
        a counter of its own (the same draws either way)."""
        ref = draws.rng_ref(self.prog.spec)
        return ref is not None and self.prog.spec.groups[ref[0]].state[ref[1]].batched

    def carries(self, drawn: dict[str, Any]) -> Any:
        """The rollout's starting carries: one carry of the whole batch (a batched counter), or
        one per example stacked over the examples."""
        g, f = self.target
        if self.per_example_counter:
            carry = self.prog.carry_of(self.prog.init(jax.random.PRNGKey(0), drawn["x"].shape[0]))
            ref = draws.rng_ref(self.prog.spec)
            carry[g][f] = drawn["x"][:, 0]
            carry[ref[0]][ref[1]] = drawn["counters"]
            return carry
        zero = self.prog.carry_of(self.prog.init(jax.random.PRNGKey(0), 1))

        def one(x, t):
            carry = {gg: dict(fs) for gg, fs in zero.items()}
            carry[g][f] = x
            ref = draws.rng_ref(self.prog.spec)
            if ref is not None:
                carry[ref[0]][ref[1]] = t
            return carry

        return jax.vmap(one)(drawn["x"], drawn["counters"])

    def final_states(self, params: Any, drawn: dict[str, Any]) -> Any:
        g, f = self.target
        run = lambda c: rollout(self.prog, params, c, drawn["n"], self.steps[1], self.remat, self.steps[0])  # noqa: E731
        if self.per_example_counter:
            return run(self.carries(drawn))[g][f][:, None]  # (B, 1, *grid, F)
        return jax.vmap(run)(self.carries(drawn))[g][f]  # (B, 1, *grid, F)

    def _loss(self, params: Any, drawn: dict[str, Any]) -> tuple[Any, tuple[dict, Any]]:
        final = self.final_states(params, drawn)
        loss = jnp.mean(self.loss_of(final[:, 0], drawn["target"]))
        return loss, ({"steps": drawn["n"].astype(jnp.float32)}, final)

    def batch_loss(self, params: Any, drawn: dict[str, Any]) -> tuple[Any, dict]:
        loss, (parts, _) = self._loss(params, drawn)
        return loss, parts

    def __call__(self, params: Any, opt_state: Any, mask: Any, pool: Any, key: Any, data: Any = None):
        """One training step: ``(params, opt_state, metrics, pool)``, the pool with the batch's
        final states written back (left as it was when the step was not finite)."""
        drawn = self.draw(params, pool, key, data)
        (loss, (parts, final)), grads = jax.value_and_grad(self._loss, has_aux=True)(params, drawn)
        params, opt_state, finite, _ = outer_update(self.optimizer, params, opt_state, mask, loss, grads)
        g, f = self.target
        kept = jnp.where(finite, final, pool[g][f][drawn["idx"]])
        pool = {**pool, g: {**pool[g], f: pool[g][f].at[drawn["idx"]].set(kept)}}
        return params, opt_state, {"loss": loss, **parts, "finite": finite}, pool


def grow(prog: Program, params: Any, seed: Any, target: tuple[str, str], steps: int, key: Any, *, record_every: int = 0) -> Any:
    """Roll the seed out for ``steps`` steps (one example, its random draws from ``key``); with
    ``record_every``, also the states every that many steps. Returns the final field value, or
    ``(final, frames)``."""
    g, f = target
    carry = prog.carry_of(prog.init(jax.random.PRNGKey(0), 1))
    carry[g][f] = seed
    ref = draws.rng_ref(prog.spec)
    if ref is not None:
        carry[ref[0]][ref[1]] = jax.random.randint(key, carry[ref[0]][ref[1]].shape, 0, jnp.iinfo(jnp.int32).max)
    if not record_every:
        return rollout(prog, params, carry, steps, steps, n_min=steps)[g][f]

    def chunk(c, _):
        c = rollout(prog, params, c, record_every, record_every, n_min=record_every)
        return c, c[g][f]

    final, frames = jax.lax.scan(chunk, carry, None, length=steps // record_every)
    return final[g][f], frames


# ---------------------------------------------------------------------------------------------
# experiments: an ExperimentConfig with a ``rollout`` section (mplp_graph.meta.run dispatches here)


def rollout_data(config: Any, prog: Program, base_dir: Any, loc: Any) -> dict[str, Any]:
    """``{"target": (*grid, channels), "seed": (1, *grid, features)}`` for a config's ``rollout``
    section, checked against the graph (located :class:`ConfigError`)."""
    from mplp_graph.errors import ConfigError
    from mplp_graph.tasks.images import seed_state, target_image

    r = config.rollout
    g, f = r.target.split(".", 1)
    spec = prog.spec
    if g not in spec.groups:
        raise ConfigError(f"graph {spec.name!r} has no group {g!r}; its groups are {sorted(spec.groups)}", loc("rollout.target"))
    grp = spec.groups[g]
    if f not in grp.state:
        raise ConfigError(f"group {g!r} has no field {f!r}; its fields are {sorted(grp.state)}", loc("rollout.target"))
    field = grp.state[f]
    if len(grp.shape) != 2 or len(field.shape) != 1 or not field.batched or field.shape[0] < 4:
        raise ConfigError(f"{r.target} must be a per-example vector field of at least 4 channels (RGBA first) on a 2-D grid; found a "
                          f"{'per-example' if field.batched else 'shared'} field of feature shape {list(field.shape)} on agents {list(grp.shape)}",
                          loc("rollout.target"))
    side = r.size + 2 * r.padding
    if tuple(grp.shape) != (side, side):
        raise ConfigError(f"the image ({r.size} cells + 2 x {r.padding} padding = {side} x {side}) must fill group {g!r}'s grid of "
                          f"{grp.shape[0]} x {grp.shape[1]}; change rollout.size / rollout.padding or the grid", loc("rollout.size"))
    persistent = prog.carry_of(prog.init(jax.random.PRNGKey(0), 1))
    if f not in persistent.get(g, {}):
        raise ConfigError(f"{r.target} is not carried from step to step (no arrow reads it before writing it), so a rollout cannot "
                          "start from a seed in it", loc("rollout.target"))
    try:
        target = target_image(r.image, r.size, r.padding, base_dir)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e), loc("rollout.image")) from None
    return {"target": jnp.asarray(target), "seed": jnp.asarray(seed_state(tuple(grp.shape), field.shape[0]))}


def rollout_step(setup: Any, optimizer: optax.GradientTransformation) -> RolloutStep:
    r, m = setup.config.rollout, setup.config.meta
    from mplp_graph.meta.train import FAST_COMPILE

    return RolloutStep(setup.prog, tuple(r.target.split(".", 1)), 4, tuple(r.steps), m.outer_batch, optimizer, r.damage, r.remat,
                       FAST_COMPILE if m.fast_compile else ())


def erase_half(states: Any) -> Any:
    """The right half of every grid emptied (the article's regeneration test). ``(N, 1, H, W, F)``"""
    w = states.shape[3]
    keep = (jnp.arange(w) < w // 2).astype(states.dtype)
    return states * keep[None, None, None, :, None]


def evaluate_rollout(setup: Any, params: Any, runs: int | None = None) -> dict[str, Any]:
    """Grow ``runs`` times from the seed for ``steps[1]`` steps (each growth its own random
    draws), erase the right half, regrow as many steps. Returns per-run losses after growing
    (``grow_loss``) and after regrowing (``regrow_loss``), run 0's frames every 4 steps, and the
    evaluation's wall time."""
    import time

    r, e = setup.config.rollout, setup.config.eval
    runs = runs or e.runs
    step = rollout_step(setup, optax.identity())
    n = r.steps[1]
    keys = jax.random.split(jax.random.PRNGKey(e.seed), 2 * runs).reshape(2, runs, 2)
    every = 4

    @jax.jit
    def run(params, data, keys):
        def one(k_grow, k_regrow):
            grown, frames = grow(setup.prog, params, data["seed"], step.target, n, k_grow, record_every=every)
            damaged = erase_half(grown[None])[0]
            regrown, frames2 = grow(setup.prog, params, damaged, step.target, n, k_regrow, record_every=every)
            return (step.loss_of(grown, data["target"])[0], step.loss_of(regrown, data["target"])[0], damaged[0],
                    jnp.concatenate([frames, frames2])[:, 0])

        return jax.vmap(one)(keys[0], keys[1])

    t0 = time.perf_counter()
    grow_loss, regrow_loss, damaged, frames = jax.device_get(run(params, setup.data, keys))
    return {"grow_loss": grow_loss, "regrow_loss": regrow_loss, "frames": frames[0], "damaged": damaged[0], "every": every,
            "steps": n, "eval_s": time.perf_counter() - t0}


def to_rgb(state: Any) -> Any:
    """An image of a state's RGBA channels on white (premultiplied alpha, clipped). float[H, W, 3]"""
    import numpy as np

    rgba = np.clip(np.asarray(state)[..., :4], 0.0, 1.0)
    return np.clip(1.0 - rgba[..., 3:4] + rgba[..., :3], 0.0, 1.0)


def write_rollout_results(setup: Any, results: dict[str, Any], out_dir: Any, *, command: str, meta_steps: int | None,
                          train_s: float | None) -> dict[str, Any]:
    """``results.json``, ``growth.png`` (target, growth, damage, regrowth) and ``growth.gif``
    (run 0's growth and regrowth) in ``out_dir``."""
    import os
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.animation import FuncAnimation, PillowWriter

    from mplp_graph.meta.checkpoint import atomic_write_json
    from mplp_graph.meta.run import results_header

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grow_loss, regrow_loss = np.asarray(results["grow_loss"]), np.asarray(results["regrow_loss"])
    doc = {
        **results_header(setup, command),
        "runs": int(grow_loss.shape[0]),
        "wall_s": {"train": train_s, "eval": results["eval_s"]},
        "metrics": {
            "grow_loss": float(grow_loss.mean()), "grow_loss_std": float(grow_loss.std()),
            "regrow_loss": float(regrow_loss.mean()), "regrow_loss_std": float(regrow_loss.std()),
            "steps": int(results["steps"]), "train_steps": meta_steps,
        },
        "config": setup.config.to_json(),
    }
    atomic_write_json(out_dir / "results.json", doc)

    frames, every, n = np.asarray(results["frames"]), results["every"], results["steps"]
    half = len(frames) // 2
    picks = [("target", setup.data["target"])]
    picks += [(f"step {(i + 1) * every}", frames[i]) for i in np.linspace(0, half - 1, 4).astype(int)]
    picks += [("right half erased", results["damaged"]), (f"regrown, {n} steps", frames[-1])]
    fig, axes = plt.subplots(1, len(picks), figsize=(1.6 * len(picks), 1.9))
    for ax, (title, state) in zip(axes, picks):
        ax.imshow(to_rgb(state), interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    tmp = out_dir / ".growth.tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, out_dir / "growth.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(2.4, 2.6))
    ax.axis("off")
    im = ax.imshow(to_rgb(frames[0]), interpolation="nearest")
    title = ax.set_title("", fontsize=8)

    def show(i):
        im.set_data(to_rgb(frames[i]))
        title.set_text(f"growing, step {(i + 1) * every}" if i < half else f"regrowing, step {(i - half + 1) * every}")
        return im, title

    tmp = out_dir / ".growth.tmp.gif"
    FuncAnimation(fig, show, frames=len(frames), blit=False).save(tmp, writer=PillowWriter(fps=12))
    os.replace(tmp, out_dir / "growth.gif")
    plt.close(fig)
    return doc
