"""Input and output standardization (paper section 3.1, "Normalization"; the authors' code,
``core.py`` ``StandardizeInputsAndStates`` and ``OutStandardizer``).

Input: one scalar mean and one scalar norm (1/std) per input *kind* of a learner (the message, the
parameter, the stored forward input...): the whole tensor (all message channels, every example,
every agent) is pooled into one scalar, as the reference does. Output: the batch-averaged update
is shifted by a fixed ``out_mean`` and scaled by a meta-trained ``out_scale``.

Statistics come from an initialisation rollout with untrained learners (see
:mod:`mplp_graph.meta.stats`) and are frozen afterwards; only ``out_scale`` is trained.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp

# Below this standard deviation the reference keeps norm = 1 (core.py StandardizeInputsAndStates).
MIN_STD = 1e-5
# Initial output scale: 0.2 x the nominal weight init std 0.05 (paper section 3.1; the authors'
# tf_layers.py MPDense.setup: 0.05 / 5, for the weights and the biases alike).
OUT_SCALE_INIT = 0.2 * 0.05


def norm_init(n_channels: int, has_param: bool, out_scale: float = OUT_SCALE_INIT) -> dict[str, Any]:
    p = {"in_mean": jnp.zeros((n_channels,), jnp.float32), "in_norm": jnp.ones((n_channels,), jnp.float32)}
    if has_param:
        p["out_mean"] = jnp.zeros((), jnp.float32)
        p["out_scale"] = jnp.asarray(out_scale, jnp.float32)
    return p


def channel_stats(channels: Sequence[Any]) -> tuple[Any, Any]:
    """Scalar mean and 1/std (population) of each channel tensor; norm 1 where std < MIN_STD.

    Computed on the stored, unreplicated tensors: replication along agent or batch axes changes
    neither the mean nor the standard deviation."""
    means = jnp.stack([jnp.mean(x) for x in channels])
    stds = jnp.stack([jnp.std(x) for x in channels])
    norms = jnp.where(stds < MIN_STD, 1.0, 1.0 / jnp.maximum(stds, MIN_STD))
    return means, norms


def standardize(channels: Sequence[Any], mean: Any, norm: Any) -> list[Any]:
    return [(x - mean[k]) * norm[k] for k, x in enumerate(channels)]
