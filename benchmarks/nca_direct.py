"""The Growing Neural Cellular Automata model and training step, hand-written in jax.numpy.

After Mordvintsev, Randazzo, Niklasson and Levin, "Growing Neural Cellular Automata" (Distill
2020), the article's model and training step. This is the ``direct`` variant of the benchmark
row ``nca_train_step`` (benchmarks/cases/grids.py); the ``cax`` variant
(benchmarks/nca_cax.py) runs CAX's modules on the same parameters and random keys and must give
the same loss and gradients; the engine's variant must too.

Layout (what another implementation must match to be compared with this one):

* state ``x``: ``(B, H, W, 16)`` float32; channels 0..3 are RGBA (premultiplied), channel
  ``ALPHA = 3`` is alpha, channels 4..15 are hidden. A seed is all zeros except the centre cell
  ``(H // 2, W // 2)``, whose channels 3..15 are 1 (the article's seed).
* perception: ``p[..., c * 3 + k] = sum_{dr, dc in -1..1} K_k[dr + 1, dc + 1] x[..., r + dr, q + dc, c]``
  with zeros outside the grid (a depthwise correlation, 'SAME' zero padding), channel-major,
  kernels ``K_0 = identity``, ``K_1 = sobel_x = outer([1, 2, 1], [-1, 0, 1]) / 8`` (x: along the
  width), ``K_2 = sobel_y = sobel_x.T`` (see :func:`perception_kernels`). 48 channels.
* update MLP per cell: ``dx = relu(p @ w1 + b1) @ w2`` with params
  ``{"w1": (48, 128), "b1": (128,), "w2": (128, 16)}``; no bias on the last layer; ``w2``
  starts at zero, ``w1`` lecun-normal (the initialiser of flax's convolutions, which CAX
  uses), ``b1`` zero.
* stochastic update (fire rate 0.5): at rollout step ``t`` (0-based) the cells that update are
  ``jax.random.bernoulli(jax.random.fold_in(key, t), 0.5, (B, H, W, 1))``, one draw per cell and
  example, shared by the 16 channels: ``x <- x + dx * fire``.
* alive masking: ``alive(x) = maxpool3x3(x[..., 3:4]) > 0.1`` (window 3 x 3, stride 1, 'SAME'
  padding with -inf); ``x <- x * (alive(x_before) & alive(x_after))``.
* loss: ``mean((x_T[..., :4] - target) ** 2)`` over batch, cells and the 4 channels, ``x_T``
  after ``steps`` rollout steps.
* optimiser: each gradient leaf divided by its own L2 norm + 1e-8 (the article's code), then
  Adam with lr 2e-3, dropping to 2e-4 after 2000 updates (the article's
  ``PiecewiseConstantDecay``), optax's Adam defaults otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

CHANNELS = 16
ALPHA = 3
KERNELS = 3  # identity, sobel_x, sobel_y
PERCEPTION = CHANNELS * KERNELS
HIDDEN = 128
FIRE_RATE = 0.5
ALIVE_THRESHOLD = 0.1
LR = 2e-3


def perception_kernels() -> np.ndarray:
    """``(3, 3, 3)``: ``[identity, sobel_x, sobel_y]``, each indexed ``[dr + 1, dc + 1]``."""
    ident = np.zeros((3, 3), np.float32)
    ident[1, 1] = 1.0
    sobel_x = np.outer([1, 2, 1], [-1, 0, 1]).astype(np.float32) / 8.0
    return np.stack([ident, sobel_x, sobel_x.T])


def perceive(x: jax.Array) -> jax.Array:
    """``(B, H, W, C) -> (B, H, W, 3 C)``, channel-major (module docstring), as shifted adds of
    one zero-padded copy of the state."""
    h, w = x.shape[-3], x.shape[-2]
    k = perception_kernels()
    pad = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)])
    shifted = {(dr, dc): pad[..., 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w, :] for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
    outs = []
    for kern in k:
        terms = [float(kern[dr + 1, dc + 1]) * s for (dr, dc), s in shifted.items() if kern[dr + 1, dc + 1] != 0]
        outs.append(sum(terms[1:], terms[0]))
    return jnp.stack(outs, axis=-1).reshape(*x.shape[:-1], x.shape[-1] * KERNELS)


def alive(x: jax.Array) -> jax.Array:
    """``(B, H, W, 1)`` bool: a cell is alive when the largest alpha in its 3 x 3 block exceeds 0.1."""
    a = x[..., ALPHA : ALPHA + 1]
    pooled = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1,) * (a.ndim - 3) + (3, 3, 1), (1,) * a.ndim, "SAME")
    return pooled > ALIVE_THRESHOLD


def init_params(key: jax.Array) -> dict[str, jax.Array]:
    """The article's initial parameters: ``w1`` lecun-normal, ``b1`` and ``w2`` zero."""
    return {
        "w1": jax.nn.initializers.lecun_normal()(key, (PERCEPTION, HIDDEN), jnp.float32),
        "b1": jnp.zeros((HIDDEN,), jnp.float32),
        "w2": jnp.zeros((HIDDEN, CHANNELS), jnp.float32),
    }


def fire_mask(key: jax.Array, t, shape: tuple[int, ...]) -> jax.Array:
    """The cells that update at rollout step ``t``: ``(B, H, W, 1)`` bool."""
    return jax.random.bernoulli(jax.random.fold_in(key, t), FIRE_RATE, (*shape[:-1], 1))


def nca_step(params: dict, x: jax.Array, fire: jax.Array) -> jax.Array:
    """One NCA step given the fire mask (module docstring)."""
    pre = alive(x)
    p = perceive(x)
    hidden = jax.nn.relu(p.reshape(-1, PERCEPTION) @ params["w1"] + params["b1"])
    dx = (hidden @ params["w2"]).reshape(x.shape)
    x = x + dx * fire.astype(x.dtype)
    return x * (pre & alive(x)).astype(x.dtype)


def rollout(params: dict, x: jax.Array, key: jax.Array, steps: int, fire=fire_mask) -> jax.Array:
    """``steps`` NCA steps in a ``lax.scan``; step ``t`` fires ``fire(key, t, x.shape)``
    (:func:`fire_mask` unless another implementation's draws are given)."""

    def body(x, t):
        return nca_step(params, x, fire(key, t, x.shape)), None

    return jax.lax.scan(body, x, jnp.arange(steps))[0]


def loss_and_states(params: dict, x0: jax.Array, target: jax.Array, key: jax.Array, steps: int, fire=fire_mask) -> tuple[jax.Array, jax.Array]:
    """L2 of the RGBA channels after ``steps`` steps to ``target`` ``(H, W, 4)``, and the batch
    after the steps (what a training step writes back into the sample pool)."""
    x = rollout(params, x0, key, steps, fire)
    return jnp.mean(jnp.square(x[..., :4] - target)), x


def loss_fn(params: dict, x0: jax.Array, target: jax.Array, key: jax.Array, steps: int) -> jax.Array:
    """The loss of :func:`loss_and_states` alone."""
    return loss_and_states(params, x0, target, key, steps)[0]


def normalize_grads() -> optax.GradientTransformation:
    """Each gradient leaf divided by its L2 norm + 1e-8 (the article's training code)."""

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(lambda g: g / (jnp.linalg.norm(g) + 1e-8), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(lr: float = LR) -> optax.GradientTransformation:
    """The article's optimiser: per-leaf gradient normalisation, then Adam with lr ``lr`` for
    2000 updates and ``lr / 10`` after."""
    return optax.chain(normalize_grads(), optax.adam(optax.piecewise_constant_schedule(lr, {2000: 0.1})))


def seed_states(batch: int, height: int, width: int) -> jax.Array:
    """``(batch, H, W, 16)``: zeros with channels 3..15 of the centre cell set to 1."""
    x = np.zeros((batch, height, width, CHANNELS), np.float32)
    x[:, height // 2, width // 2, ALPHA:] = 1.0
    return jnp.asarray(x)


def make_train_step(loss=loss_and_states, optimizer: optax.GradientTransformation | None = None, steps: int = 64):
    """``train_step(params, opt_state, x0, target, key) -> (params, opt_state, loss, grads, x_T)``
    (unjitted) for any ``loss(params, x0, target, key, steps) -> (loss, x_T)`` with this module's
    layout (the ``cax`` variant passes its own); ``x_T`` is the batch after the rollout."""
    opt = optimizer or make_optimizer()

    def train_step(params, opt_state, x0, target, key):
        (value, x), grads = jax.value_and_grad(loss, has_aux=True)(params, x0, target, key, steps)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, grads, x

    return train_step
