"""Grids of cell agents against CAX ("Cellular Automata Accelerated in JAX", Faldor & Cully,
ICLR 2025) and hand-written jax.numpy, tagged ``cax``.

* ``life_1024`` / ``life_1024_b8``: Conway's Game of Life on a wrapped 1024 x 1024 grid, 1,000
  steps per timed call, batch 1 / 8, from one random board (30 % alive). ``engine``: the grid
  template (mplp_graph/templates/grid.py; graphs/life_grid.yaml at 1024 x 1024: a Moore stencil
  with the wrap boundary) compiled with ``mg.compile_graph`` and stepped by ``Program.step_carry``
  in a ``lax.fori_loop``; its ``build_s`` is the graph's build (template + compile_graph) and its
  ``compile_s`` the XLA compile of the 1,000-step loop. ``direct``: eight ``jnp.roll`` s and the
  rule. ``cax``: ``cax.cs.life.Life`` (B3/S23, circular padding) through its own rollout
  (``ComplexSystem.__call__``: ``nnx.jit`` + ``nnx.scan``). The check: all boards equal after the
  steps. Derived: million cell updates per second per variant.
* ``nca_train_step``: one training step of the Growing NCA (Mordvintsev et al., Distill 2020):
  a 64-step rollout of 8 72 x 72 states, L2 of RGBA to a target, gradient, Adam.
  ``direct``: benchmarks/nca_direct.py (its docstring is the layout every variant matches);
  ``cax``: CAX's modules (benchmarks/nca_cax.py) on the same parameters and fire keys;
  ``engine``: graphs/growing_nca.yaml rolled out by the engine's rollout trainer
  (benchmarks/nca_engine.py), wrapped in the same optimiser step. The checks, to float32
  tolerance on loss, gradients, updated parameters and final states: ``cax`` equals ``direct``
  (same fire keys); ``engine`` equals the direct model run with the engine's random draws
  (``nca_engine.engine_fire``: the engine draws from per-example counters, not from one key).

The CAX variants raise ImportError where CAX is not installed (it needs Python >= 3.12) and the
harness skips them: ``bash benchmarks/cax_env.sh && .venv-cax/bin/python -m benchmarks.run_all
--tag cax``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Case, Variant

LIFE_SIZE = 1024
LIFE_STEPS = 1000
LIFE_DENSITY = 0.3


def life_board(batch: int, size: int = LIFE_SIZE, seed: int = 0) -> np.ndarray:
    """``(batch, size, size)`` float32 of 0/1, each cell alive with probability 0.3."""
    return (np.random.RandomState(seed).rand(batch, size, size) < LIFE_DENSITY).astype(np.float32)


def life_direct_step(s: jax.Array) -> jax.Array:
    """One Life step on ``(..., H, W)`` boards wrapped around both edges: eight ``jnp.roll`` s
    summed, then birth on 3 and survival on 2 or 3."""
    n = sum(jnp.roll(s, (dr, dc), (-2, -1)) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0))
    return jnp.where((n == 3) | ((n == 2) & (s > 0)), 1.0, 0.0).astype(s.dtype)


def life_direct(board: np.ndarray, steps: int):
    x = jnp.asarray(board)
    run = jax.jit(lambda s: jax.lax.fori_loop(0, steps, lambda _, s: life_direct_step(s), s))
    return lambda: run(x)


def life_engine_program(size: int = LIFE_SIZE):
    """The engine's wrapped Life grid at ``size x size``, compiled (graph build only, no XLA)."""
    import mplp_graph as mg
    from mplp_graph.templates.grid import grid

    return mg.compile_graph(grid(size, size, wrap=True, name=f"life_{size}"))


def life_engine(board: np.ndarray, steps: int):
    prog = life_engine_program(board.shape[-1])
    carry = {"cell": {"s": jnp.asarray(board)}}

    def body(_, c):
        return prog.step_carry({}, c, {})[0]

    run = jax.jit(lambda c: jax.lax.fori_loop(0, steps, body, c)["cell"]["s"])
    return lambda: run(carry)


def life_cax(board: np.ndarray, steps: int):
    from cax.cs.life import Life  # ImportError without CAX: the variant is skipped

    birth, survival = Life.birth_survival_from_string("B3/S23")
    cs = Life(birth=birth, survival=survival, padding="CIRCULAR")
    x = jnp.asarray(board)[..., None]  # CAX's layout: (..., H, W, channels)
    return lambda: cs(x, num_steps=steps)[..., 0]


def life_check(out: dict) -> dict:
    boards = {n: np.asarray(b) for n, b in out.items()}
    ref_name, ref = next(iter(boards.items()))
    for n, b in boards.items():
        assert b.shape == ref.shape, f"life: {n} gives shape {b.shape}, {ref_name} {ref.shape}"
        diff = int(np.sum(b != ref))
        assert diff == 0, f"life: {n} differs from {ref_name} in {diff} cells after the steps"
    return {"boards_equal": sorted(boards), "live_cells_after": int(ref.sum())}


def life_case(batch: int) -> Case:
    board = life_board(batch)
    cells = batch * LIFE_SIZE * LIFE_SIZE * LIFE_STEPS

    def derived(medians: dict) -> dict:
        return {f"{n}_mcell_updates_per_s": round(cells / s / 1e6, 1) for n, s in medians.items()}

    return Case(
        name="life_1024" if batch == 1 else f"life_1024_b{batch}",
        variants=(
            Variant("engine", lambda: life_engine(board, LIFE_STEPS), "grid template (Moore stencil, wrap), Program.step_carry in fori_loop"),
            Variant("direct", lambda: life_direct(board, LIFE_STEPS), "8 jnp.roll + rule in fori_loop"),
            Variant("cax", lambda: life_cax(board, LIFE_STEPS), "cax.cs.life.Life B3/S23 CIRCULAR, its own rollout (nnx.jit + nnx.scan)"),
        ),
        check=life_check,
        rounds=3,
        params={"size": LIFE_SIZE, "batch": batch, "steps_per_call": LIFE_STEPS, "density": LIFE_DENSITY, "dtype": "float32"},
        derived=derived,
        tags=("cax", "slow"),
        note="one timed call = 1,000 steps; engine build_s = template + compile_graph, compile_s = XLA compile of the loop",
    )


# ---------------------------------------------------------------------------------------------
# Growing NCA training step

NCA_BATCH = 8
NCA_STEPS = 64


def nca_start(batch: int, height: int, width: int, radius: int = 14, seed: int = 3) -> jax.Array:
    """A grown-looking batch: a disc of ``radius`` cells around the centre filled with uniform
    [0, 1) values in every channel (alpha included, so most of it is alive), zeros elsewhere; the
    same array on every call. Seeds alone would leave a handful of live cells after 64 steps of
    untrained parameters, and the check would compare mostly zeros."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = (yy - height // 2) ** 2 + (xx - width // 2) ** 2 <= radius**2
    x = rng.rand(batch, height, width, 16).astype(np.float32) * disc[None, :, :, None]
    return jnp.asarray(x)


def nca_inputs() -> dict:
    """The fixed inputs of every variant: parameters (``w2`` small and random instead of zero, so
    that every gradient is non-trivial), Adam state, 8 grown-looking states (:func:`nca_start`),
    the target, the fire key."""
    from benchmarks import nca_direct as nd
    from mplp_graph.tasks.images import target_image

    target = jnp.asarray(target_image("face", 40, 16))
    params = nd.init_params(jax.random.PRNGKey(0))
    params["w2"] = 0.02 * jax.random.normal(jax.random.PRNGKey(1), params["w2"].shape, jnp.float32)
    return {
        "params": params,
        "opt_state": nd.make_optimizer().init(params),
        "x0": nca_start(NCA_BATCH, *target.shape[:2]),
        "target": target,
        "key": jax.random.PRNGKey(2),
    }


def nca_variant(loss_factory):
    """A thunk running one jitted training step with the loss ``loss_factory()`` returns."""
    from benchmarks import nca_direct as nd

    inp = nca_inputs()
    step = jax.jit(nd.make_train_step(loss_factory(), steps=NCA_STEPS))

    def thunk():
        params, _, loss, grads, x = step(inp["params"], inp["opt_state"], inp["x0"], inp["target"], inp["key"])
        return {"loss": loss, "grads": grads, "params": params, "x": x}

    return thunk


def nca_direct_loss():
    from benchmarks import nca_direct as nd

    return nd.loss_and_states


def nca_cax_loss():
    from benchmarks import nca_cax  # ImportError without CAX: the variant is skipped

    return nca_cax.make_loss(NCA_STEPS)


def nca_engine_loss():
    from benchmarks import nca_engine

    return nca_engine.loss_and_states


def nca_direct_engine_draws_loss():
    """The direct model with the engine's random draws (the engine variant's check)."""
    import functools

    from benchmarks import nca_direct as nd
    from benchmarks import nca_engine

    return functools.partial(nd.loss_and_states, fire=nca_engine.engine_fire)


def nca_compare(o: dict, ref: dict, name: str, ref_name: str, figures: dict) -> None:
    """Assert ``o`` equals ``ref`` (loss, gradients, updated parameters, final states) to float32
    tolerance; record the differences in ``figures``."""
    loss_rel = abs(float(o["loss"]) - float(ref["loss"])) / abs(float(ref["loss"]))
    assert loss_rel < 1e-5, f"nca: {name} loss {float(o['loss'])} vs {ref_name} {float(ref['loss'])}"
    for part in ("grads", "params"):
        for k in ref[part]:
            a, b = np.asarray(o[part][k]), np.asarray(ref[part][k])
            scale = max(float(np.max(np.abs(b))), 1e-12)
            rel = float(np.max(np.abs(a - b))) / scale
            assert rel < 1e-4, f"nca: {name} {part}[{k}] differs from {ref_name} by {rel:.2e} of its largest entry"
            figures[f"{name}_{part}_{k}_max_rel_diff"] = rel
    x_diff = float(np.max(np.abs(np.asarray(o["x"]) - np.asarray(ref["x"]))))
    assert x_diff < 1e-4, f"nca: {name} final states differ from {ref_name} by {x_diff}"
    figures[f"{name}_loss_rel_diff"] = loss_rel
    figures[f"{name}_x_max_abs_diff"] = x_diff


def nca_check(out: dict) -> dict:
    figures: dict = {}
    if "direct" in out:
        for n in out:
            if n not in ("direct", "engine"):
                nca_compare(out[n], out["direct"], n, "direct", figures)
        figures["loss"] = float(out["direct"]["loss"])
        figures["alive_cells_after"] = int(np.sum(np.asarray(out["direct"]["x"])[..., 3] > 0.1))
    if "engine" in out:
        ref = nca_variant(nca_direct_engine_draws_loss)()
        nca_compare(out["engine"], ref, "engine", "direct_with_engine_draws", figures)
        figures["engine_loss"] = float(out["engine"]["loss"])
    return figures


NCA_CASE = Case(
    name="nca_train_step",
    variants=(
        Variant("engine", lambda: nca_variant(nca_engine_loss), "graphs/growing_nca.yaml, RolloutStep.final_states (benchmarks/nca_engine.py) + the shared optimiser step"),
        Variant("direct", lambda: nca_variant(nca_direct_loss), "benchmarks/nca_direct.py: shifted adds, matmul MLP, lax.scan"),
        Variant("cax", lambda: nca_variant(nca_cax_loss), "CAX ConvPerceive + NCAUpdate (1x1 convolutions), its own rollout"),
    ),
    check=nca_check,
    rounds=3,
    params={"batch": NCA_BATCH, "size": 72, "start": "nca_start: a random disc of radius 14 (seed 3)", "target": "mplp_graph.tasks.images face, 40x40 padded to 72x72", "rollout_steps": NCA_STEPS,
            "channels": 16, "hidden": 128, "fire_rate": 0.5, "optimizer": "per-leaf gradient normalisation + Adam 2e-3"},
    tags=("cax", "slow"),
    note="one timed call = one training step (rollout, loss, gradient, Adam update) from the same parameters",
)

CASES = (life_case(1), life_case(8), NCA_CASE)
