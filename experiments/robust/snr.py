"""How much the meta-gradient at a learner's initialisation agrees with itself across tasks.

For each seed (``meta.seed``: the learner's initialisation, its standardizer statistics and its
pool of priors), the masked meta-gradient of one meta-step is taken at the initial parameters
for ``--draws`` different draws of task and prior. Reported per seed: the mean gradient's norm
against the mean of the norms (``coherence``: 1 when every draw agrees, about 1/sqrt(draws) for
pure noise), the mean cosine between two draws, and the norm itself.

    python experiments/robust/snr.py --draws 12 --seeds 0 1 2 3 --out experiments/robust/snr.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from mplp_graph import xla
from mplp_graph.cache import enable_compilation_cache
from mplp_graph.config.load import read_value
from mplp_graph.meta.checkpoint import atomic_write_json
from mplp_graph.meta.config import apply_overrides, load_experiment_config
from mplp_graph.meta.run import build, git_commit, initial_params, meta_step
from mplp_graph.meta.step import make_pool, trainable_mask


def coherence(grads: np.ndarray) -> dict[str, float]:
    """``grads``: (draws, parameters)."""
    norms = np.linalg.norm(grads, axis=1)
    unit = grads / norms[:, None]
    cos = (unit @ unit.T)[np.triu_indices(len(grads), 1)]
    mean = float(np.linalg.norm(grads.mean(0)))
    return {"mean_grad_norm": mean, "mean_norm": float(norms.mean()), "coherence": mean / float(norms.mean()),
            "mean_cos": float(cos.mean()), "pure_noise_coherence": 1 / float(np.sqrt(len(grads)))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/mnist/config.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--draws", type=int, default=12)
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--out", type=Path, default=Path("experiments/robust/snr.json"))
    args = ap.parse_args(argv)
    enable_compilation_cache()
    overrides = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            ap.error(f"--set {item}: expected SECTION.KEY=VALUE")
        overrides[key] = read_value(value, f"--set {key}")
    base = apply_overrides(load_experiment_config(args.config), overrides, "--set")
    grad = None
    seeds = {}
    for seed in args.seeds:
        setup = build(apply_overrides(base, {"meta.seed": seed}))
        params = initial_params(setup)
        step = meta_step(setup)
        mask = np.asarray(ravel_pytree(trainable_mask(params))[0])
        pool = make_pool(setup.prog, jax.random.PRNGKey(seed + 1), base.meta.pool)
        if grad is None:  # one program for every seed (same shapes)
            grad = xla.jit(lambda p, pool, k, d: jax.grad(lambda q: step.batch_loss(q, step.draw(q, pool, k, d))[0])(p))
        keys = [jax.random.fold_in(jax.random.PRNGKey(seed + 2), 10_000 + i) for i in range(args.draws)]  # not the training steps' keys
        g = np.stack([np.asarray(ravel_pytree(grad(params, pool, k, setup.data))[0]) * mask for k in keys])
        seeds[str(seed)] = coherence(g)
        print(seed, {k: round(v, 4) for k, v in seeds[str(seed)].items()}, flush=True)
    atomic_write_json(args.out, {"command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]), "git_commit": git_commit(),
                                 "config": args.config, "draws": args.draws, "seeds": seeds})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
