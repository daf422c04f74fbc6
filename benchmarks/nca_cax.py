"""The Growing NCA model written with CAX's modules (Faldor & Cully, "CAX: Cellular Automata
Accelerated in JAX", ICLR 2025; PyPI ``cax`` 0.4), run on the parameters and random keys of the
hand-written model in benchmarks/nca_direct.py so that both give the same loss and gradients.

The system is the one of CAX's example notebook ``examples/40_growing_nca.ipynb``: a
``ConvPerceive`` (depthwise 3 x 3 convolution, ``feature_group_count=16``, 48 outputs) whose
kernel is set to fixed filters, and an ``NCAUpdate`` (two 1 x 1 convolutions 48 -> 128 ReLU ->
16, zero-initialised last layer, cell dropout as the stochastic update, alive masking on the
last channel). Differences from the direct layout, undone here so that the two are one model:

* CAX's alive channel is the last one and its RGBA the last four (``state[..., -4:]``); the
  direct layout has RGBA in channels 0..3. CAX's channel ``j`` holds direct channel
  ``(j + 4) % 16`` (:func:`to_cax`, :func:`from_cax`), and ``w1``'s rows and ``w2``'s columns are
  permuted the same way.
* CAX's notebook stacks ``[identity, grad_kernel]``, whose gradient order is (d/drow, d/dcol) =
  (sobel_y, sobel_x); here the kernel is set to the direct order [identity, sobel_x, sobel_y].
* ``nnx.Dropout`` scales kept updates by ``1 / (1 - rate) = 2``; ``step_size = 0.5`` undoes it
  (exactly: powers of two). Its mask is ``bernoulli(fold_in(stream key, count), 0.5,
  (B, H, W, 1))``; the stream key is set to the direct model's fire key and its count to 0 before
  each rollout, so step ``t`` draws ``fold_in(key, t)`` as in the direct model.
* the last 1 x 1 convolution has a bias (flax's default); it stays at 0 and is not trained, as
  the direct model has none.

The batch is stepped as one ``(B, H, W, 16)`` array (CAX's modules take leading batch axes);
CAX's notebook vmaps its rollout over the batch instead, which XLA batches into the same
convolutions. Importing this module raises ImportError where CAX is not installed (it needs
Python >= 3.12: ``bash benchmarks/cax_env.sh``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from cax.core.perceive import ConvPerceive
from cax.core.update import NCAUpdate
from cax.core import ComplexSystem
from flax import nnx

from benchmarks import nca_direct as nd

SHIFT = 4  # CAX channel j = direct channel (j + SHIFT) % 16


def to_cax(x: jax.Array) -> jax.Array:
    """Direct channel order -> CAX's (RGBA last)."""
    return jnp.roll(x, -SHIFT, axis=-1)


def from_cax(x: jax.Array) -> jax.Array:
    return jnp.roll(x, SHIFT, axis=-1)


class GrowingNCA(ComplexSystem):
    """CAX's Growing NCA system (examples/40_growing_nca.ipynb), with the fixed perception kernel
    in the direct model's order and the dropout scaling undone (module docstring)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.perceive = ConvPerceive(
            channel_size=nd.CHANNELS, perception_size=nd.PERCEPTION, feature_group_count=nd.CHANNELS, rngs=rngs
        )
        self.update = NCAUpdate(
            channel_size=nd.CHANNELS,
            perception_size=nd.PERCEPTION,
            hidden_layer_sizes=(nd.HIDDEN,),
            cell_dropout_rate=1.0 - nd.FIRE_RATE,
            step_size=1.0 - nd.FIRE_RATE,
            zeros_init=True,
            rngs=rngs,
        )
        k = jnp.asarray(nd.perception_kernels()).transpose(1, 2, 0)  # (3, 3, 3): [dr, dc, kernel]
        self.perceive.conv.kernel[...] = jnp.tile(k, (1, 1, nd.CHANNELS))[:, :, None, :]  # output c * 3 + k

    def _step(self, state, input=None):
        return self.update(state, self.perceive(state), input)


def cax_params(params: dict) -> dict:
    """Direct-layout ``params`` as CAX's layer kernels and bias (channels permuted, module docstring)."""
    w1 = jnp.roll(params["w1"].reshape(nd.CHANNELS, nd.KERNELS, nd.HIDDEN), -SHIFT, axis=0).reshape(nd.PERCEPTION, nd.HIDDEN)
    return {0: {"kernel": w1[None, None], "bias": params["b1"]}, 1: {"kernel": jnp.roll(params["w2"], -SHIFT, axis=1)[None, None]}}


def make_loss(steps: int = 64, seed: int = 0):
    """``loss(params, x0, target, key, steps) -> (loss, x_T)`` in the direct layout (the
    signature of nca_direct.loss_and_states), computed by CAX's system; ``steps`` must equal the
    one given here."""
    graphdef, state = nnx.split(GrowingNCA(rngs=nnx.Rngs(seed)))
    built_steps = steps

    def loss(params, x0, target, key, steps):
        if steps != built_steps:
            raise ValueError(f"this CAX loss was built for {built_steps} steps, got {steps}")
        pure = nnx.to_pure_dict(state)
        for layer, parts in cax_params(params).items():
            pure["update"]["layers"][layer].update(parts)
        rngs = pure["update"]["dropout"]["rngs"]
        rngs["key"] = jax.random.wrap_key_data(key) if key.dtype == jnp.uint32 else key
        rngs["count"] = jnp.zeros_like(rngs["count"])
        s = jax.tree_util.tree_map(lambda v: v, state)
        nnx.replace_by_pure_dict(s, pure)
        cs = nnx.merge(graphdef, s)
        x = from_cax(cs(to_cax(x0), num_steps=steps))
        return jnp.mean(jnp.square(x[..., :4] - target)), x

    return loss
