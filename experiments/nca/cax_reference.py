"""A reference loss curve for the Growing NCA: the hand-written model (benchmarks/nca_direct.py)
trained as in the article, checked equal to CAX's model first, with CAX itself trained a few
steps to show the two curves start together.

Training follows Mordvintsev et al., "Growing Neural Cellular Automata" (Distill 2020),
experiment 3 ("regenerating"): a sample pool of 1024 states, all seeds at first; each training
step samples 8, sorts them by loss (highest first), replaces the highest-loss one by a seed,
damages the 3 lowest-loss ones (a random disc of cells set to zero, the article's
``make_circle_masks``), rolls out, takes the L2 of the RGBA channels to the target (the
built-in 72 x 72 target ``face`` of mplp_graph/tasks/images.py: no emoji offline), normalises each
gradient and steps Adam (lr 2e-3), and writes the states back into the pool. The article draws
the rollout length from [64, 96]; ``--rollout 64 96`` does so (a 96-step scan whose steps past the
drawn length keep the state); the default ``64 64`` keeps the run within this machine's time.

    python experiments/nca/cax_reference.py --steps 300 --cax-steps 3      # in .venv-cax

The first training batch goes through both models' training steps and must agree (loss,
gradients, updated parameters, final states); then CAX trains ``--cax-steps`` steps and the
direct model ``--steps`` steps from the same start, pool and random draws. Writes
``experiments/nca/cax_reference.json`` atomically (also every 10 steps): per-step losses of both,
the final loss, an evaluation (8 seeds grown 64 and 96 steps; regrowth after erasing the right
half, as the engine's ``mplp-graph eval``), timings and the command; the trained parameters
beside it (``<out>.params.npz``).
Without CAX installed (Python < 3.12) the CAX parts are recorded as skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import nca_direct as nd  # noqa: E402
from benchmarks.harness import run_facts, write_json_atomic  # noqa: E402
from mplp_graph.tasks.images import target_image  # noqa: E402

OUT = Path(__file__).resolve().parent / "cax_reference.json"


def circle_masks(rng: np.random.RandomState, n: int, h: int, w: int) -> np.ndarray:
    """``(n, h, w)`` float32, 1 inside a disc of radius in [0.1, 0.4] centred in [-0.5, 0.5]^2
    (coordinates [-1, 1] across the grid): the article's ``make_circle_masks``."""
    x = np.linspace(-1.0, 1.0, w)[None, None, :]
    y = np.linspace(-1.0, 1.0, h)[None, :, None]
    center = rng.uniform(-0.5, 0.5, (2, n, 1, 1))
    r = rng.uniform(0.1, 0.4, (n, 1, 1))
    xx, yy = (x - center[0]) / r, (y - center[1]) / r
    return (xx * xx + yy * yy < 1.0).astype(np.float32)


def masked_loss(loss, max_steps: int):
    """``loss(params, x0, target, key, max_steps)`` with the steps past ``n`` undone: a rollout
    of a drawn length ``n`` without a compile per length. Only for the direct model (it rolls out
    step by step); ``loss`` itself when the length is fixed."""

    def with_length(params, x0, target, key, n):
        def body(x, t):
            y = nd.nca_step(params, x, nd.fire_mask(key, t, x.shape))
            return jnp.where(t < n, y, x), None

        x = jax.lax.scan(body, x0, jnp.arange(max_steps))[0]
        return jnp.mean(jnp.square(x[..., :4] - target)), x

    return with_length


def make_step(loss, opt, steps: int, drawn: bool):
    """A jitted training step ``(params, opt_state, x0, target, key, n) -> (params, opt_state, loss, grads, x)``."""
    import optax

    def step(params, opt_state, x0, target, key, n):
        fn = (lambda p: loss(p, x0, target, key, n)) if drawn else (lambda p: loss(p, x0, target, key, steps))
        (value, x), grads = jax.value_and_grad(fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, grads, x

    return jax.jit(step)


def per_example_loss(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.mean(np.square(x[..., :4] - target), axis=(1, 2, 3))


class Trainer:
    """The pool, the parameters and the random draws of one training run (module docstring)."""

    def __init__(self, args, target: np.ndarray):
        self.args, self.target = args, target
        h, w = target.shape[:2]
        self.seed = np.asarray(nd.seed_states(1, h, w))[0]
        self.pool = np.repeat(self.seed[None], args.pool, axis=0)
        self.rng = np.random.RandomState(args.seed)
        self.params = nd.init_params(jax.random.PRNGKey(args.seed))
        self.opt = nd.make_optimizer(args.lr)
        self.opt_state = self.opt.init(self.params)
        self.key = jax.random.PRNGKey(args.seed + 1)
        self.i = 0

    def batch(self):
        """The next training batch: pool indices, states (sorted, seeded, damaged), fire key, length."""
        a = self.args
        idx = self.rng.choice(len(self.pool), a.batch, replace=False)
        x0 = self.pool[idx]
        order = np.argsort(-per_example_loss(x0, self.target))
        idx, x0 = idx[order], x0[order].copy()
        x0[0] = self.seed
        if a.damage:
            x0[-a.damage:] *= (1.0 - circle_masks(self.rng, a.damage, *x0.shape[1:3]))[..., None]
        n = int(self.rng.randint(a.rollout[0], a.rollout[1] + 1))
        key = jax.random.fold_in(self.key, self.i)
        self.i += 1
        return idx, x0, key, n

    def apply(self, step, idx, x0, key, n):
        self.params, self.opt_state, loss, grads, x = step(self.params, self.opt_state, jnp.asarray(x0), jnp.asarray(self.target), key, n)
        self.pool[idx] = np.asarray(x)
        return float(loss), grads, x


def evaluate(params, target: np.ndarray, seeds: int = 8, steps: int = 64) -> float:
    """Mean loss of ``seeds`` seeds grown ``steps`` steps (no damage, fire keys 0..seeds-1)."""
    x0 = nd.seed_states(seeds, *target.shape[:2])
    x = nd.rollout(params, x0, jax.random.PRNGKey(12345), steps)
    return float(jnp.mean(jnp.square(x[..., :4] - target)))


def evaluate_regrowth(params, target: np.ndarray, seeds: int = 8, steps: int = 96) -> dict:
    """The engine's evaluation protocol (mplp_graph.meta.rollout.evaluate_rollout) on this model:
    ``seeds`` seeds grown ``steps`` steps, the right half of each grid erased, regrown ``steps``
    steps. Mean losses after growing and after regrowing."""
    x0 = nd.seed_states(seeds, *target.shape[:2])
    grown = nd.rollout(params, x0, jax.random.PRNGKey(12345), steps)
    w = grown.shape[2]
    damaged = grown * (jnp.arange(w) < w // 2).astype(grown.dtype)[None, None, :, None]
    regrown = nd.rollout(params, damaged, jax.random.PRNGKey(54321), steps)
    loss = lambda x: float(jnp.mean(jnp.square(x[..., :4] - target)))  # noqa: E731
    return {f"eval_loss_{steps}_steps_from_seed": loss(grown), f"eval_regrow_loss_{steps}_steps": loss(regrown)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="training steps of the direct model")
    ap.add_argument("--cax-steps", type=int, default=3, help="training steps of CAX's model (0: none)")
    ap.add_argument("--rollout", type=int, nargs=2, default=(64, 64), metavar=("MIN", "MAX"), help="rollout length drawn from [MIN, MAX]")
    ap.add_argument("--pool", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--damage", type=int, default=3, help="lowest-loss samples damaged per batch")
    ap.add_argument("--lr", type=float, default=nd.LR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=40, help="target size before padding by 16")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    lo, hi = args.rollout
    if not 1 <= lo <= hi or args.steps < 1 or args.cax_steps < 0 or not 0 <= args.damage < args.batch <= args.pool:
        ap.error("need 1 <= MIN <= MAX, --steps >= 1, --cax-steps >= 0 and 0 <= --damage < --batch <= --pool")
    target = target_image("face", args.size, 16)
    drawn = hi > lo
    facts = run_facts("python experiments/nca/cax_reference.py " + " ".join(sys.argv[1:] if argv is None else argv))
    doc = {"experiment": "nca_cax_reference", "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "out"},
           "target": "mplp_graph.tasks.images: face", **facts}
    out = args.out

    def save():
        write_json_atomic(out, doc)

    direct_loss = masked_loss(nd.loss_and_states, hi) if drawn else nd.loss_and_states
    opt = nd.make_optimizer(args.lr)
    direct_step = make_step(direct_loss, opt, hi, drawn)
    try:
        from benchmarks import nca_cax
    except ImportError as e:
        nca_cax = None
        doc["cax"] = {"skipped": f"{type(e).__name__}: {e}"}
    if nca_cax is not None and args.cax_steps:
        if drawn:
            raise SystemExit("cax_reference.py: CAX's rollout has a fixed length; use --rollout N N with --cax-steps")
        cax_step = make_step(nca_cax.make_loss(lo), opt, lo, False)
        # one batch through both training steps: equal before anything is trained
        probe = Trainer(args, target)
        idx, x0, key, n = probe.batch()
        p = {**probe.params, "w2": 0.02 * jax.random.normal(jax.random.PRNGKey(99), probe.params["w2"].shape)}
        args_ = (p, probe.opt_state, jnp.asarray(x0), jnp.asarray(target), key, n)
        d, c = direct_step(*args_), cax_step(*args_)
        check = {"loss_direct": float(d[2]), "loss_cax": float(c[2]),
                 "grads_max_abs_diff": max(float(jnp.max(jnp.abs(d[3][k] - c[3][k]))) for k in d[3]),
                 "grads_max_abs": max(float(jnp.max(jnp.abs(d[3][k]))) for k in d[3]),
                 "x_max_abs_diff": float(jnp.max(jnp.abs(d[4] - c[4]))),
                 "params_max_abs_diff": max(float(jnp.max(jnp.abs(d[0][k] - c[0][k]))) for k in d[0]),
                 "note": "first training batch, w2 drawn small (not zero) so that every gradient is non-trivial"}
        assert abs(check["loss_direct"] - check["loss_cax"]) <= 1e-5 * abs(check["loss_direct"]), check
        assert check["grads_max_abs_diff"] <= 1e-4 * check["grads_max_abs"] and check["x_max_abs_diff"] < 1e-4, check
        doc["check_one_step"] = check
        print("one step equal:", check, flush=True)
        tr = Trainer(args, target)
        losses, times = [], []
        for _ in range(args.cax_steps):
            t0 = time.perf_counter()
            losses.append(tr.apply(cax_step, *tr.batch())[0])
            times.append(time.perf_counter() - t0)
            print(f"cax step {len(losses)}: loss {losses[-1]:.6f} ({times[-1]:.1f} s)", flush=True)
            doc["cax"] = {"losses": losses, "step_s": times}
            save()
    tr = Trainer(args, target)
    losses, times = [], []
    t_start = time.perf_counter()
    for i in range(args.steps):
        t0 = time.perf_counter()
        losses.append(tr.apply(direct_step, *tr.batch())[0])
        times.append(time.perf_counter() - t0)
        if (i + 1) % 10 == 0 or i + 1 == args.steps:
            print(f"direct step {i + 1}: loss {losses[-1]:.6f} (mean of last 10 {np.mean(losses[-10:]):.6f}; {times[-1]:.2f} s/step)", flush=True)
            doc["direct"] = {"losses": losses, "first_step_s": times[0], "median_step_s": float(np.median(times[1:] or times)),
                             "wall_s": time.perf_counter() - t_start, "steps_done": i + 1}
            save()
    doc["direct"].update({"final_loss": losses[-1], "final_loss_mean_last_10": float(np.mean(losses[-10:])),
                          "eval_loss_64_steps_from_seed": evaluate(tr.params, target), **evaluate_regrowth(tr.params, target)})
    params_file = out.with_suffix(".params.npz")
    tmp = params_file.with_name(params_file.stem + ".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in tr.params.items()})
    tmp.replace(params_file)
    doc["direct"]["params_file"] = params_file.name
    cax_losses = doc.get("cax", {}).get("losses")
    if cax_losses:
        k = len(cax_losses)
        doc["cax_vs_direct_first_steps"] = {"cax": cax_losses, "direct": losses[:k],
                                            "max_abs_diff": float(np.max(np.abs(np.asarray(cax_losses) - np.asarray(losses[:k]))))}
    save()
    print(f"wrote {out}: final loss {losses[-1]:.6f}, eval {doc['direct']['eval_loss_64_steps_from_seed']:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
