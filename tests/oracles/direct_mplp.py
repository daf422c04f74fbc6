"""One MPLP meta-step written by hand in jax.numpy, the oracle of the engine's :class:`MetaStep`.

The direct version is a plain jax.numpy implementation of the reference inner loop
(the authors' code as docs/mplp.md describes it): a forward that stores its inputs, the loss node's GRU, then per
dense layer the bias GRU, the weight GRU (fed the bias node's message, replicated over the
fan-in; its messages averaged over the fan-out), the activation GRU; residual batch-mean updates
``p + (mean_B c[..., 0] - out_mean) * out_scale``; scalar input standardization
``(v - in_mean) * in_norm`` per input kind; softmax and CE for the MNIST-shaped net. The weight
learner's first layer is split by input kind (the authors' code as docs/mplp.md describes it), so the ``[B, in, out, msg]``
replicated input is never built; the other learners concatenate their inputs. Then the outer
update written out: the same prior / task sampling as ``MetaStep.draw``, hint + CV loss, mask,
per-leaf gradient normalization, Adam (b1 0.9, b2 0.999, eps 1e-7), the finiteness guard.

It reads its learner parameters from the engine's ``prog.init_params`` pytree (each arrow's
``net`` and ``norm``; the ``norm`` part holds ``in_mean``/``in_norm`` per input channel in the
order of the arrow's inputs minus the carry), so both take the same arguments. :func:`build`
makes both steps with standardizer statistics that differ per channel (so a wrong channel order
shows) and randomized ``out_scale``; :func:`compare_steps` checks one meta-step of each from the
same state and key:

* meta-loss and its hint / CV parts to 1e-5 relative,
* the masked, per-leaf normalized meta-gradient (what Adam is fed: its first moment after one
  step is ``(1 - b1) g``) to 1e-4 per leaf, relative to the leaf's largest entry,
* the new parameters to ``2 * lr`` (Adam's first step moves every entry by about
  ``lr * sign(g)``, so entries whose normalized gradient is at float noise level may differ by up
  to that much),

raising AssertionError otherwise. tests/test_direct_mplp.py runs it on small nets; the benchmark
cases (benchmarks/cases/meta_step.py) run it before timing the paper's configs.

Configs (:data:`CONFIGS`), as experiments/sinusoid/config.yaml and experiments/mnist/config.yaml
(the GRU learner):

* ``sinusoid``: ``mplp_feedforward((1, 20, 20, 1))`` (relu, L2), stateful, msg 8, hidden 15;
  5 inner steps of batch 10, outer batch 4, CV on 50 points, hint 0.7 / CV 0.3, Adam 1e-4
  (the authors' code as docs/mplp.md describes it); tasks from :class:`SinusoidFamily`.
* ``mnist``: ``mplp_feedforward((144, 50, 10), "sigmoid", "ce", msg=4, hidden=7,
  sharing="layers")``; 20 inner steps of batch 8, outer batch 1, CV on 8 points, Adam 5e-4
  (the authors' code as docs/mplp.md describes it); random normal inputs and random one-hot labels
  (:class:`RandomClassFamily`: the cost does not depend on the pixels).
* ``mnist_<in>x<h>``: the MNIST config with the net (in, h, 10), e.g. ``mnist_784x100``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.step import ADAM_EPS, MetaStep, adam, make_pool, trainable_mask
from mplp_graph.ops.builtin import CE_CLIP
from mplp_graph.runtime.program import Program, compile_graph
from mplp_graph.runtime.state import agent_params
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward

LOSS_RTOL = 1e-5  # meta-loss agreement (relative)
GRAD_TOL = 1e-4  # normalized meta-gradient agreement (per leaf, relative to the leaf's largest entry)
ADAM_B1, ADAM_B2 = 0.9, 0.999


@dataclass(frozen=True)
class MetaConfig:
    """A meta-step to compare: the net, its learner, the inner loop and the outer batch."""

    name: str
    sizes: tuple[int, ...]
    activation: str
    loss: str
    msg: int
    hidden: int
    sharing: str
    inner_steps: int
    batch: int
    outer_batch: int
    cv_points: int
    lr: float
    pool: int
    task: str  # "sinusoid" | "random_class"
    hint_weight: float = 0.7
    cv_weight: float = 0.3


CONFIGS = {
    "sinusoid": MetaConfig("sinusoid", (1, 20, 20, 1), "relu", "l2", 8, 15, "none", 5, 10, 4, 50, 1e-4, 128, "sinusoid"),
    "mnist": MetaConfig("mnist", (144, 50, 10), "sigmoid", "ce", 4, 7, "layers", 20, 8, 1, 8, 5e-4, 16, "random_class"),
}


def mnist_config(n_in: int, hidden: int) -> MetaConfig:
    """The MNIST config with the net (n_in, hidden, 10), named ``mnist_<n_in>x<hidden>``: the cost
    grows with the number of synapses (~700 GFLOP per meta-step at (784, 100))."""
    return dataclasses.replace(CONFIGS["mnist"], name=f"mnist_{n_in}x{hidden}", sizes=(n_in, hidden, 10))


@dataclass(frozen=True)
class RandomClassFamily:
    """MNIST-shaped tasks for timing: standard normal inputs, uniformly random one-hot labels.
    ``sample(key, data=None)`` (a synthetic family: no data) returns the keys of
    :meth:`SinusoidFamily.sample`: xt (K, B, in), yt, xe (N, in), ye."""

    inner_steps: int
    batch: int
    cv_points: int
    n_in: int
    n_out: int

    def sample(self, key: Any, data: Any = None) -> dict[str, Any]:
        kx, ky, ke, kl = jax.random.split(key, 4)
        k, b, n = self.inner_steps, self.batch, self.cv_points
        return {
            "xt": jax.random.normal(kx, (k, b, self.n_in)),
            "yt": jax.nn.one_hot(jax.random.randint(ky, (k, b), 0, self.n_out), self.n_out),
            "xe": jax.random.normal(ke, (n, self.n_in)),
            "ye": jax.nn.one_hot(jax.random.randint(kl, (n,), 0, self.n_out), self.n_out),
        }


def task_family(cfg: MetaConfig):
    if cfg.task == "sinusoid":
        return SinusoidFamily(inner_steps=cfg.inner_steps, batch=cfg.batch, cv_points=cfg.cv_points)
    return RandomClassFamily(cfg.inner_steps, cfg.batch, cfg.cv_points, cfg.sizes[0], cfg.sizes[-1])


# ---------------------------------------------------------------------------------------------
# the direct version, written from docs/mplp.md


def _learner(params: Any, cfg: MetaConfig, arrow: str, kind: str | None = None) -> tuple[Any, Any]:
    """(GRU parameters, standardizer) of the learner on ``arrow``; with sharing ``layers`` the
    W (resp. b) GRU of every dense layer is ``params["W_net"]`` (``"b_net"``), the
    standardizers stay per arrow."""
    if cfg.sharing == "layers" and kind in ("W", "b"):
        return params[f"{kind}_net"]["net"], params[arrow]["norm"]
    if cfg.sharing not in ("none", "layers"):
        raise NotImplementedError(f"sharing {cfg.sharing!r}")
    return params[arrow]["net"], params[arrow]["norm"]


def _gate_kernel(p: Any) -> Any:
    """The three matrices applied to the GRU input, side by side: (x_dim, 2C + 80)."""
    return jnp.concatenate([p["W_update_x"], p["W_reset_x"], p["next_x_net"]["k1"]], axis=1)


def _gru(p: Any, xproj: Any, c: Any) -> Any:
    """GRU step (the authors' code as docs/mplp.md describes it) given ``xproj = x @ _gate_kernel(p)``."""
    C = c.shape[-1]
    u = jax.nn.sigmoid(xproj[..., :C] + c @ p["W_update_c"] + p["b_update"])
    r = jax.nn.sigmoid(xproj[..., C : 2 * C] + c @ p["W_reset_c"] + p["b_reset"])
    nx, nc = p["next_x_net"], p["next_c_net"]
    hx = jnp.tanh(jnp.tanh(xproj[..., 2 * C :] + nx["b1"]) @ nx["k2"] + nx["b2"]) @ nx["k3"]
    hc = jnp.tanh(jnp.tanh((r * c) @ nc["k1"] + nc["b1"]) @ nc["k2"] + nc["b2"]) @ nc["k3"]
    return u * c + (1.0 - u) * jnp.tanh(hx + hc + p["b_next"])


def _node(p: Any, norm: Any, chans: list[Any], c: Any) -> Any:
    """A node learner on concatenated standardized inputs; ``chans`` are (B, n, width)."""
    x = jnp.concatenate([(v - norm["in_mean"][k]) * norm["in_norm"][k] for k, v in enumerate(chans)], axis=-1)
    return _gru(p, x @ _gate_kernel(p), c)


_ACT = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}


def _forward(cfg: MetaConfig, Ws: list, bs: list, x: Any):
    """Returns (pred, stored: layer inputs, pre-bias sums, pre-activations, softmax states)."""
    h, ins, zs, pres = x, [], [], []
    for l, (W, b) in enumerate(zip(Ws, bs)):
        ins.append(h)
        z = h @ W
        zs.append(z)
        h = z + b
        if l < len(Ws) - 1:
            pres.append(h)
            h = _ACT[cfg.activation](h)
    sm = None
    if cfg.loss == "ce":
        zmax = jnp.max(h, axis=-1, keepdims=True)
        t = h - zmax
        e = jnp.exp(t)
        den = jnp.broadcast_to(jnp.sum(e, axis=-1, keepdims=True), e.shape)
        sm = (h, t, e, den)
        h = e / den
    return h, (ins, zs, pres, sm)


def _loss_elems(cfg: MetaConfig, pred: Any, t: Any):
    """Elementwise loss and the loss node's state channels (the authors' core.py ``L2Loss``,
    ``CrossEntropyLoss``)."""
    if cfg.loss == "ce":
        pc = jnp.clip(pred, CE_CLIP, 1.0 - CE_CLIP)
        lg = jnp.log(pc)
        loss = -t * lg
        return loss, [loss, pc, t, lg]
    diff = t - pred
    loss = 0.5 * diff**2
    return loss, [loss, pred, t, diff]


def direct_zero_carries(cfg: MetaConfig, B: int) -> dict[str, Any]:
    cp, cn = 1 + cfg.hidden + cfg.msg, cfg.hidden + cfg.msg
    s = cfg.sizes
    L = len(s) - 1
    c = {"loss": jnp.zeros((B, s[-1], cn))}
    if cfg.loss == "ce":
        c["softmax"] = jnp.zeros((B, s[-1], cn))
    for l in range(L):
        c[f"W{l}"] = jnp.zeros((B, s[l], s[l + 1], cp))
        c[f"b{l}"] = jnp.zeros((B, s[l + 1], cp))
        if l < L - 1:
            c[f"a{l}"] = jnp.zeros((B, s[l + 1], cn))
    return c


def direct_inner_step(cfg: MetaConfig, params: Any, Ws: list, bs: list, carries: dict, x: Any, y: Any):
    """One inner step (the authors' code as docs/mplp.md describes it). Returns (Ws, bs, carries)."""
    L, msg = len(Ws), cfg.msg
    pred, (ins, zs, pres, sm) = _forward(cfg, Ws, bs, x)
    _, states = _loss_elems(cfg, pred, y)
    new_c = dict(carries)
    last_b = f"b{L - 1}"
    # loss node: its first input is the elementwise loss value (paper eq. 2)
    arrow = "loss->softmax" if cfg.loss == "ce" else f"loss->{last_b}"
    p, norm = _learner(params, cfg, arrow)
    c = _node(p, norm, [v[..., None] for v in states], carries["loss"])
    new_c["loss"] = c
    m = c[..., -msg:]
    if cfg.loss == "ce":
        p, norm = _learner(params, cfg, f"softmax->{last_b}")
        c = _node(p, norm, [m] + [v[..., None] for v in sm], carries["softmax"])
        new_c["softmax"] = c
        m = c[..., -msg:]
    new_W, new_b = list(Ws), list(bs)
    B = x.shape[0]
    for l in reversed(range(L)):
        W, b = Ws[l], bs[l]
        # bias node: [m_j, b_j, z_j]; reads the pre-update b
        p, norm = _learner(params, cfg, f"b{l}->W{l}", "b")
        c = _node(p, norm, [m, jnp.broadcast_to(b, (B, b.shape[0]))[..., None], zs[l][..., None]], carries[f"b{l}"])
        new_c[f"b{l}"] = c
        new_b[l] = b + (jnp.mean(c[..., 0], axis=0) - norm["out_mean"]) * norm["out_scale"]
        m_b = c[..., -msg:]  # (B, out, msg)
        # weight node: [m_b_j (replicated over i), w_ij, x_i (replicated over j)], first layer split by kind
        arrow = f"W{l}->a{l - 1}" if l > 0 else "W0.learn"
        p, norm = _learner(params, cfg, arrow, "W")
        K = _gate_kernel(p)
        mu, nr = norm["in_mean"], norm["in_norm"]
        xproj = (
            (((m_b - mu[0]) * nr[0]) @ K[:msg])[:, None, :, :]  # (B, 1, out, .)
            + ((W - mu[1]) * nr[1])[None, :, :, None] * K[msg]  # (1, in, out, .)
            + ((ins[l] - mu[2]) * nr[2])[:, :, None, None] * K[msg + 1]  # (B, in, 1, .)
        )
        c = _gru(p, xproj, carries[f"W{l}"])  # (B, in, out, C)
        new_c[f"W{l}"] = c
        new_W[l] = W + (jnp.mean(c[..., 0], axis=0) - norm["out_mean"]) * norm["out_scale"]
        if l > 0:  # the first layer's outgoing message is discarded (as the authors' MPNetwork._backward does)
            m = jnp.mean(c[..., -msg:], axis=2)  # mean over the fan-out (paper eq. 5)
            p, norm = _learner(params, cfg, f"a{l - 1}->b{l - 1}")
            c = _node(p, norm, [m, pres[l - 1][..., None]], carries[f"a{l - 1}"])
            new_c[f"a{l - 1}"] = c
            m = c[..., -msg:]
    return new_W, new_b, new_c


def direct_predict_loss(cfg: MetaConfig, Ws: list, bs: list, x: Any, y: Any) -> Any:
    pred, _ = _forward(cfg, Ws, bs, x)
    return jnp.mean(_loss_elems(cfg, pred, y)[0])


def direct_task_loss(cfg: MetaConfig, params: Any, prior: Any, task: dict[str, Any], remat: bool = False) -> tuple[Any, dict]:
    """``remat``: each inner step under ``jax.checkpoint``, as the engine's default (``meta.remat``)."""
    L = len(cfg.sizes) - 1
    Ws = [prior[f"W{l}"]["w"] for l in range(L)]
    bs = [prior[f"b{l}"]["b"] for l in range(L)]

    def body(carry, xy):
        Ws, bs, cs = carry
        x, y = xy
        Ws, bs, cs = direct_inner_step(cfg, params, Ws, bs, cs, x, y)
        return (Ws, bs, cs), direct_predict_loss(cfg, Ws, bs, x, y)  # hint: same batch, theta_{i+1}

    body = jax.checkpoint(body) if remat else body
    init = (Ws, bs, direct_zero_carries(cfg, task["xt"].shape[1]))
    (Ws, bs, _), hints = jax.lax.scan(body, init, (task["xt"], task["yt"]))
    cv = direct_predict_loss(cfg, Ws, bs, task["xe"], task["ye"])
    total = cfg.hint_weight * jnp.mean(hints) + cfg.cv_weight * cv
    return total, {"hint": jnp.mean(hints), "cv": cv}


@dataclass(frozen=True)
class DirectMetaStep:
    """The meta-step of :class:`MetaStep`, by hand: same sampling, loss, normalization, and
    Adam (``lr``, b1 0.9, b2 0.999, eps 1e-7) written out."""

    cfg: MetaConfig
    sample_task: Callable[[Any, Any], dict[str, Any]]  # family.sample: (key, data) -> task
    remat: bool = False  # inner steps under jax.checkpoint (the engine's default does this)

    def batch_loss(self, params: Any, priors: Any, tasks: dict[str, Any]) -> tuple[Any, dict]:
        losses, parts = jax.vmap(lambda pr, t: direct_task_loss(self.cfg, params, pr, t, self.remat))(priors, tasks)
        return jnp.mean(losses), {k: jnp.mean(v) for k, v in parts.items()}

    def init_opt(self, params: Any) -> Any:
        zeros = jnp.zeros_like(ravel_pytree(params)[0])
        return {"count": jnp.zeros((), jnp.int32), "mu": zeros, "nu": zeros}

    def __call__(self, params: Any, opt: Any, mask: Any, pool: Any, key: Any):
        k_pool, k_task = jax.random.split(key)
        n_pool = jax.tree_util.tree_leaves(pool)[0].shape[0]
        idx = jax.random.choice(k_pool, n_pool, (self.cfg.outer_batch,), replace=False)
        priors = jax.tree_util.tree_map(lambda a: a[idx], pool)
        tasks = jax.vmap(lambda k: self.sample_task(k, None))(jax.random.split(k_task, self.cfg.outer_batch))
        (loss, parts), grads = jax.value_and_grad(self.batch_loss, has_aux=True)(params, priors, tasks)
        # the update on the raveled parameters, as the engine's meta-step does it (one vector for
        # ~180 leaves: a few XLA kernels instead of ~1,500)
        p, unravel = ravel_pytree(params)
        g = ravel_pytree(grads)[0] * ravel_pytree(mask)[0]
        sizes = [x.size for x in jax.tree_util.tree_leaves(params)]
        leaf = np.repeat(np.arange(len(sizes)), sizes)
        g = g / (jnp.sqrt(jax.ops.segment_sum(g * g, leaf, num_segments=len(sizes))) + 1e-8)[leaf]
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g))
        t = opt["count"] + 1
        mu = ADAM_B1 * opt["mu"] + (1 - ADAM_B1) * g
        nu = ADAM_B2 * opt["nu"] + (1 - ADAM_B2) * g * g
        tf = t.astype(jnp.float32)
        c1, c2 = 1 - ADAM_B1**tf, 1 - ADAM_B2**tf
        new = jnp.where(finite, p - self.cfg.lr * (mu / c1) / (jnp.sqrt(nu / c2) + ADAM_EPS), p)
        new_opt = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), {"count": t, "mu": mu, "nu": nu}, opt)
        return unravel(new), new_opt, {"loss": loss, **parts, "finite": finite}




# ---------------------------------------------------------------------------------------------
# both steps from one state


@dataclass
class Bench:
    """Both meta-steps of one config and the state they start from."""

    cfg: MetaConfig
    prog: Program
    family: Any
    engine: MetaStep
    direct: DirectMetaStep
    params: Any
    mask: Any
    pool: Any
    opt: dict[str, Any]  # initial optimizer state per side

    def args(self, side: str, key: Any) -> tuple:
        """The arguments of ``side``'s meta-step (``"engine"`` or ``"direct"``) with ``key``."""
        return (self.params, self.opt[side], self.mask, self.pool, key)


def distinct_statistics(params: Any, rng: np.random.Generator) -> Any:
    """``params`` with every standardizer's ``in_mean`` / ``in_norm`` drawn per channel (means in
    [-0.5, 0.5], norms in [0.5, 2]), ``out_mean`` in [-0.01, 0.01] and ``out_scale`` scaled by a
    factor in [0.5, 2] per learner: values that differ from channel to channel and learner to
    learner, so that a hand-written step that reads a wrong channel or a wrong learner's
    standardizer disagrees."""
    draw = {
        "in_mean": lambda x: rng.uniform(-0.5, 0.5, np.shape(x)),
        "in_norm": lambda x: rng.uniform(0.5, 2.0, np.shape(x)),
        "out_mean": lambda x: rng.uniform(-0.01, 0.01, np.shape(x)),
        "out_scale": lambda x: np.asarray(x) * rng.uniform(0.5, 2.0),
    }

    def leaf(path, x):
        f = draw.get(getattr(path[-1], "key", None))
        return x if f is None else jnp.asarray(f(x), jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, params)


def numpy_init(shapes: Any, rng: np.random.Generator) -> Any:
    """Random float32 arrays of the shapes of ``shapes`` (a pytree of shape structs), drawn in
    numpy: matrices (and stacks of them) ``N(0, 2 / (fan_in + fan_out))``, vectors and scalars
    ``N(0, 0.1)`` (non-zero biases, so that a bias read wrongly shows). Any values serve the
    comparison; these cost no XLA compilation, where the engine's initializers, run op by op,
    compile one small program per shape (seconds per config)."""

    def leaf(s):
        scale = np.sqrt(2.0 / (s.shape[-2] + s.shape[-1])) if len(s.shape) >= 2 else 0.1
        return jnp.asarray(rng.normal(0.0, scale, s.shape), jnp.float32)

    return jax.tree_util.tree_map(leaf, shapes)


def build(cfg: MetaConfig, seed: int = 0, direct_remat: bool = False, init: str = "engine", engine_remat: bool = True,
          **engine_options: Any) -> Bench:
    """Both meta-steps of ``cfg`` (``engine_remat``: the engine's ``MetaLoss.remat``, on by default
    as in ``meta.remat``; ``engine_options``: extra :class:`MetaStep` fields, e.g.
    ``outer_batch_mode``), learner parameters with :func:`distinct_statistics`, a pool of
    ``cfg.pool`` priors and each side's initial optimizer state. ``init``: ``"engine"`` draws
    the learner parameters and the priors with the graph's initializers, ``"numpy"`` with
    :func:`numpy_init` (for tests: no compilation before the meta-steps')."""
    spec = mplp_feedforward(cfg.sizes, cfg.activation, cfg.loss, msg=cfg.msg, hidden=cfg.hidden, sharing=cfg.sharing)
    prog = compile_graph(spec)
    family = task_family(cfg)
    key = jax.random.PRNGKey(seed)
    rng = np.random.default_rng(seed)
    if init == "engine":
        params = prog.init_params(key)
        pool = make_pool(prog, jax.random.fold_in(key, 3), cfg.pool)
    elif init == "numpy":
        params = numpy_init(jax.eval_shape(prog.init_params, key), rng)
        prior = jax.eval_shape(lambda k: agent_params(prog.spec, prog.init(k, 1)), key)
        pool = numpy_init(jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct((cfg.pool, *s.shape), s.dtype), prior), rng)
    else:
        raise ValueError(f"init must be 'engine' or 'numpy', got {init!r}")
    params = distinct_statistics(params, rng)
    engine = MetaStep(prog, family.sample, MetaLoss(cfg.hint_weight, cfg.cv_weight, engine_remat), cfg.outer_batch, adam(cfg.lr), **engine_options)
    direct = DirectMetaStep(cfg, family.sample, direct_remat)
    opt = {"engine": engine.init_opt_state(params), "direct": direct.init_opt(params)}
    return Bench(cfg, prog, family, engine, direct, params, trainable_mask(params), pool, opt)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def first_moment(opt_state: Any) -> Any:
    """Adam's first moment (the raveled vector ``mu``) of either side's optimizer state."""
    if isinstance(opt_state, dict):
        return opt_state["mu"]
    for part in opt_state:  # optax's chain: (ScaleByAdamState, ...)
        if hasattr(part, "mu"):
            return part.mu
    raise TypeError(f"no Adam first moment in the optimizer state {type(opt_state).__name__}")


def numpy_leaves(flat: Any, like: Any) -> list[tuple[str, np.ndarray]]:
    """The raveled vector ``flat`` (``ravel_pytree`` order) split into numpy arrays shaped as
    the leaves of ``like``, with their paths (numpy: no XLA program per leaf shape)."""
    flat = np.asarray(flat)
    out, at = [], 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(like)[0]:
        n = int(np.size(leaf))
        out.append((jax.tree_util.keystr(path), flat[at : at + n].reshape(np.shape(leaf))))
        at += n
    return out


def compare_steps(b: Bench, engine_out: tuple, direct_out: tuple, grad_tol: float = GRAD_TOL) -> dict[str, Any]:
    """Check that one meta-step of each side, from the same state and key, agrees (module
    docstring); returns the differences, raises AssertionError naming every one that is too large."""
    (pe, oe, me), (pd, od, md) = engine_out, direct_out
    out: dict[str, Any] = {"loss_engine": float(me["loss"]), "loss_direct": float(md["loss"])}
    for k in ("loss", "hint", "cv"):
        out[f"{k}_rel_diff"] = _rel(float(me[k]), float(md[k]))
    # the normalized, masked gradient Adam was fed: mu = (1 - b1) g after one step from zero
    ge = numpy_leaves(np.asarray(first_moment(oe)) / (1 - ADAM_B1), b.params)
    gd = numpy_leaves(np.asarray(first_moment(od)) / (1 - ADAM_B1), b.params)
    worst, worst_leaf = 0.0, ""
    for (path, a), (_, c) in zip(ge, gd, strict=True):
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        err = float(np.max(np.abs(a - c))) / scale if scale > 0 else float(np.max(np.abs(c), initial=0.0))
        if not np.isfinite(err) or err > worst:
            worst, worst_leaf = err, path
    out["grad_max_rel_diff"] = worst
    out["grad_worst_leaf"] = worst_leaf
    out["param_max_diff"] = max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree_util.tree_leaves(pe), jax.tree_util.tree_leaves(pd), strict=True)
    )
    failures = [f"{k} = {out[k]:.3g} > {LOSS_RTOL}" for k in ("loss_rel_diff", "hint_rel_diff", "cv_rel_diff") if not out[k] <= LOSS_RTOL]
    if not worst <= grad_tol:
        failures.append(f"normalized meta-gradient differs by {worst:.3g} (relative, leaf {worst_leaf}) > {grad_tol}")
    if not out["param_max_diff"] <= 2 * b.cfg.lr:
        failures.append(f"parameters after one meta-step differ by {out['param_max_diff']:.3g} > 2 lr = {2 * b.cfg.lr}")
    if not (bool(me["finite"]) and bool(md["finite"])):
        failures.append(f"a non-finite meta-step (engine finite={bool(me['finite'])}, direct finite={bool(md['finite'])})")
    assert not failures, f"{b.cfg.name}: the engine's meta-step and the direct version disagree: " + "; ".join(failures)
    return out
