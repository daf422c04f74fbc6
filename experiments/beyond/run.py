"""Issue 8 experiments: MPLP beyond feedforward nets, small enough for a 2-core CPU.

    python experiments/beyond/run.py skip   --steps 1000   # residual DAG net, sinusoid: MPLP vs Adam
    python experiments/beyond/run.py step   --steps 1000   # step-activation net meta-trained from scratch
    python experiments/beyond/run.py hybrid --steps 600    # hybrid (gradient + message) vs message only
    python experiments/beyond/run.py grid                  # Life and asynchronous diffusion on grids, drawn
    python experiments/beyond/run.py transfer              # the ReLU-trained learner (hybrid part) on the step net
    python experiments/beyond/run.py collect               # experiments/beyond/results.json from the parts
    python experiments/beyond/run.py replot                # the sinusoid figures again, from the parts' JSON

Each part writes ``<part>/part.json`` (numbers, curves, its command, wall times) and its plots
into ``experiments/beyond/<part>/``; ``collect`` gathers the parts into ``results.json`` in the
format of the other experiments' results (metrics named after their experiment). Meta-training follows
examples/sinusoid.py: learner parameters, standardizer statistics from one init rollout, then
the library's meta_train, checkpoints in OUT/runs/<part> (meta-steps: outer batch 4, 5 inner
steps of 10 points, hint 0.7 + CV 0.3, Adam with
per-leaf normalized meta-gradients), a pool of 128 random priors; evaluation is the paper's
sinusoid protocol over 100 runs (fresh prior and task per run) against Adam(0.01) on the same
forward net.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mplp_graph as mg
from mplp_graph.cache import enable_compilation_cache
from mplp_graph.meta.evaluate import evaluate_mplp, evaluate_optax, plot_eval_curves
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.run import git_commit
from mplp_graph.meta.stats import init_statistics
from mplp_graph.meta.step import MetaStep, adam, make_pool, trainable_mask
from mplp_graph.meta.train import meta_train
from mplp_graph.runtime.state import agent_params
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.grid import grid
from mplp_graph.templates.mplp import mplp_feedforward
from mplp_graph.templates.skip import mplp_skip, skip_feedforward

HERE = Path(__file__).resolve().parent
OUT = HERE  # where the parts are written (--out)
FAMILY = SinusoidFamily(inner_steps=5, batch=10)  # A in [0.1, 0.5], phase in [0, pi], x in [-5, 5]
K = FAMILY.inner_steps


# ---------------------------------------------------------------------------------------------
# meta-training and evaluation (examples/sinusoid.py, as functions)


def train_part(prog: mg.Program, steps: int, seed: int, lr: float, run_dir: Path, outer_batch: int = 4, pool: int = 128,
               time_budget: float | None = None) -> dict[str, Any]:
    """Learner parameters, standardizer statistics from one init rollout, then the library's
    meta-training loop (mplp_graph.meta.train.meta_train: metrics, checkpoints and resume in
    ``run_dir``, the NaN guard)."""
    key = jax.random.PRNGKey(seed)
    k_params, k_stats, k_pool, k_meta = jax.random.split(key, 4)
    params = prog.init_params(k_params)

    def sample_round(k):
        kp, kt = jax.random.split(k)
        task = FAMILY.sample(kt)
        return agent_params(prog.spec, prog.init(kp, 1)), task["xt"], task["yt"]

    params = init_statistics(prog, params, sample_round, k_stats)
    untrained = params
    step = MetaStep(prog, FAMILY.sample, MetaLoss(), outer_batch, adam(lr))
    t0 = time.perf_counter()
    params, history = meta_train(step, params, trainable_mask(params), make_pool(prog, k_pool, pool), k_meta, steps, run_dir,
                                 time_budget=time_budget, log_every=1, checkpoint_every=250, progress=False)
    for h in history[99::100]:
        print(f"  meta-step {h['step']:5d}  meta-loss {h['loss']:.5f}  cv {h['cv']:.5f}", flush=True)
    if len(history) < steps:
        print(f"  time budget {time_budget:.0f} s reached after {len(history)} meta-steps", flush=True)
    compile_s = history[0]["step_s"] if history else None  # the first step's wall time includes its compilation
    return {"params": params, "untrained": untrained, "history": history, "train_s": time.perf_counter() - t0, "compile_s": compile_s}


def evaluate(prog: mg.Program, fwd: mg.Program, params: Any, runs: int, seed: int = 12345) -> dict[str, np.ndarray]:
    return jax.tree_util.tree_map(np.asarray, evaluate_mplp(prog, fwd, params, FAMILY, jax.random.PRNGKey(seed), runs))


def evaluate_adam(fwd: mg.Program, runs: int, seed: int = 12345) -> dict[str, np.ndarray]:
    return jax.tree_util.tree_map(np.asarray, evaluate_optax(fwd, optax.adam(0.01), FAMILY, jax.random.PRNGKey(seed), runs))


def smooth(values: list[float], width: int = 50) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if len(v) < width:
        return v
    return np.convolve(v, np.ones(width) / width, mode="valid")


def curve_stats(name: str, ev: np.ndarray) -> dict[str, float]:
    return {f"{name}_eval_l2_step{K}": float(ev[:, K].mean()), f"{name}_eval_l2_step{K}_std": float(ev[:, K].std())}


def write_part(part: str, doc: dict[str, Any]) -> None:
    out = OUT / part
    out.mkdir(parents=True, exist_ok=True)
    doc = {"part": part, "command": "python " + " ".join(["experiments/beyond/run.py", *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"), **doc}
    (out / "part.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out / 'part.json'}")


def plot_meta_loss(histories: dict[str, list[dict]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, hist in histories.items():
        for ax, key in zip(axes, ("loss", "cv")):
            v = smooth([h[key] for h in hist])
            ax.plot(np.arange(len(v)) + (len(hist) - len(v)) + 1, v, label=name)
    for ax, key in zip(axes, ("meta-loss (0.7 hint + 0.3 CV)", "CV loss after 5 inner steps")):
        ax.set_xlabel("meta-step")
        ax.set_ylabel(key + ", mean of 50")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# parts


def part_sinusoid(part: str, spec: mg.GraphSpec, fwd_spec: mg.GraphSpec, args, title: str) -> dict[str, Any]:
    """Meta-train ``spec`` on the sinusoid family, evaluate it (untrained and trained) and Adam."""
    prog, fwd = mg.compile_graph(spec), mg.compile_graph(fwd_spec)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(prog.init_params(jax.random.PRNGKey(0))))
    print(f"[{part}] {spec.name}: {len(spec.groups)} groups, {len(spec.arrows)} arrows, {n_params:,} learner parameters", flush=True)
    run = train_part(prog, args.steps, args.seed, args.lr, OUT / "runs" / part, time_budget=args.time_budget)
    t0 = time.perf_counter()
    rows = {
        "MPLP, untrained": evaluate(prog, fwd, run["untrained"], args.runs),
        f"MPLP, {len(run['history'])} meta-steps": evaluate(prog, fwd, run["params"], args.runs),
        "Adam(0.01)": evaluate_adam(fwd, args.runs),
    }
    eval_s = time.perf_counter() - t0
    curves = {k: v["loss"] for k, v in rows.items()}  # eval L2 on the 100-point grid, (runs, K + 1)
    out = OUT / part
    out.mkdir(parents=True, exist_ok=True)
    plot_eval_curves({k: (v.mean(0), v.std(0)) for k, v in curves.items()}, title, out / "eval.png")
    plot_meta_loss({spec.name: run["history"]}, title, out / "meta_loss.png")
    np.savez(out / "learner.npz", **{jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(run["params"])[0]})
    untrained, trained, adam_ev = curves.values()
    print(f"[{part}] eval L2 after {K} steps: MPLP {trained[:, K].mean():.4f} +- {trained[:, K].std():.4f}, "
          f"untrained {untrained[:, K].mean():.4f}, Adam {adam_ev[:, K].mean():.4f} +- {adam_ev[:, K].std():.4f}", flush=True)
    hist = run["history"]
    return {
        "title": title,
        "graph": spec.name,
        "description": spec.description,
        "learner_parameters": int(n_params),
        "meta_steps": len(hist),
        "runs": args.runs,
        "settings": {"lr": args.lr, "seed": args.seed, "outer_batch": 4, "pool": 128, "inner_steps": K, "batch": FAMILY.batch},
        "wall_s": {"meta_train": run["train_s"], "first_step_with_compile": run["compile_s"], "eval": eval_s},
        "metrics": {
            **curve_stats("mplp", trained),
            **curve_stats("untrained", untrained),
            **curve_stats("adam", adam_ev),
            "meta_loss_first100": float(np.mean([h["loss"] for h in hist[:100]])),
            "meta_loss_last100": float(np.mean([h["loss"] for h in hist[-100:]])),
        },
        "curves": {name: {"eval_mean": ev.mean(0).tolist(), "eval_std": ev.std(0).tolist()} for name, ev in curves.items()},
        "meta_loss": [h["loss"] for h in hist],
        "cv": [h["cv"] for h in hist],
    }


def cmd_skip(args) -> int:
    kw = dict(skips=[(0, len(SIZES) - 1)], residual=[(1, 2)])  # x -> output; a0 => pre of a1 (a residual layer)
    spec = mplp_skip(SIZES, **kw, msg=args.msg, hidden=args.hidden)
    fwd = skip_feedforward(SIZES, **kw, protocol="none")
    doc = part_sinusoid("skip", spec, fwd, args, f"residual DAG net {SIZES} (dense skip x->out, identity a0=>a1), sinusoid")
    write_part("skip", doc)
    return 0


def cmd_step(args) -> int:
    spec = mplp_feedforward(SIZES, "step", msg=args.msg, hidden=args.hidden)
    fwd = mg.feedforward(SIZES, "step", protocol="none")  # Adam gets zero gradients through the step
    doc = part_sinusoid("step", spec, fwd, args, f"step-activation net {SIZES}, meta-trained from scratch, sinusoid")
    write_part("step", doc)
    return 0


def cmd_hybrid(args) -> int:
    """The same meta-training (seed, tasks, priors, steps) with and without the gradient channel."""
    docs = {}
    for name, hybrid in (("message_only", False), ("hybrid", True)):
        spec = mplp_feedforward(SIZES, "relu", msg=args.msg, hidden=args.hidden, hybrid=hybrid)
        docs[name] = part_sinusoid(f"hybrid/{name}", spec, mg.feedforward(SIZES, "relu", protocol="none"), args, f"{name}, {SIZES} ReLU, sinusoid")
    plot_meta_loss({f"{n} ({d['meta_steps']} steps)": [{"loss": l, "cv": c} for l, c in zip(d["meta_loss"], d["cv"])] for n, d in docs.items()},
                   f"hybrid (loss gradient + learned message) vs message only, {SIZES} ReLU, seed {args.seed}", OUT / "hybrid" / "meta_loss.png")
    write_part("hybrid", {"runs": docs})
    return 0


def cmd_grid(args) -> int:
    """Simulations: a glider in Life (synchronous), the same board with asynchronous updates,
    and diffusion from a hot spot around a hole with asynchronous updates; pictures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mplp_graph.templates.grid import neighbour_edges

    out = OUT / "grid"
    out.mkdir(parents=True, exist_ok=True)
    n = 16
    hole = np.ones((n, n), bool)
    hole[5:11, 5:8] = False  # a 6 x 3 wall in the middle
    board = np.zeros((n, n), np.float32)
    for r, c in ((0, 1), (1, 2), (2, 0), (2, 1), (2, 2)):  # a glider
        board[r, c] = 1.0
    hot = np.zeros((n, n), np.float32)
    hot[7:9, 2:4] = 1.0  # a hot spot left of the wall
    runs = {
        "life, synchronous": (grid(n, n, wrap=True), board, (0, 4, 8, 16, 32)),
        "life, asynchronous (fire 0.5)": (grid(n, n, wrap=True, fire=0.5), board, (0, 4, 8, 16, 32)),
        "diffusion, asynchronous (fire 0.5)": (grid(n, n, rule="diffuse", mask=hole, fire=0.5), hot, (0, 8, 32, 64, 128)),
    }
    results, pictures = {}, {}
    t0 = time.perf_counter()
    for name, (spec, init, frames_at) in runs.items():
        prog = mg.compile_graph(spec)
        state = prog.init(jax.random.PRNGKey(0), 1)
        state["cell"]["s"] = jnp.asarray(init)[None]
        step = jax.jit(prog.step)
        frames = []
        for t in range(max(frames_at) + 1):
            if t in frames_at:
                frames.append(np.asarray(state["cell"]["s"][0]))
            state, _ = step({}, state, {})
        pictures[name] = (frames_at, frames)
        results[name] = {"steps": list(frames_at), "sum": [float(f.sum()) for f in frames]}
    sim_s = time.perf_counter() - t0
    sync_frames = pictures["life, synchronous"][1]
    glider_ok = bool(np.array_equal(sync_frames[-1], np.roll(board, (8, 8), axis=(0, 1))))  # 32 steps: 8 cells diagonally
    async_final = pictures["life, asynchronous (fire 0.5)"][1][-1]
    diff_final = pictures["diffusion, asynchronous (fire 0.5)"][1][-1]
    right = diff_final[:, 9:].sum() / max(diff_final.sum(), 1e-12)  # share of the heat beyond the wall
    fig, axes = plt.subplots(len(runs), 5, figsize=(11, 2.4 * len(runs)))
    for i, (name, (frames_at, frames)) in enumerate(pictures.items()):
        for j, (t, f) in enumerate(zip(frames_at, frames)):
            ax = axes[i, j]
            if name.startswith("diffusion"):  # each frame on its own scale: the shape of the spread
                ax.imshow(np.ma.masked_where(~hole, f), cmap="magma", vmin=0, vmax=max(float(f.max()), 1e-12))
            else:
                ax.imshow(f, cmap="Greys", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"step {t}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle("16 x 16 grids of cell agents (templates/grid.py): neighbour edge lists, local rules, random schedules", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "grid.png", dpi=110)
    plt.close(fig)
    # the topology of a small masked grid: one node per cell at its place, the 'sense' edges
    small = np.ones((6, 6), bool)
    small[2:4, 2:4] = False
    edges = neighbour_edges(6, 6, "moore", small)
    fig, ax = plt.subplots(figsize=(4, 4))
    for s, d in edges:
        (r0, c0), (r1, c1) = divmod(s, 6), divmod(d, 6)
        ax.plot([c0, c1], [r0, r1], color="#9b59b6", lw=0.8, alpha=0.6)
    rr, cc = np.nonzero(small)
    ax.scatter(cc, rr, s=120, color="#f5b7d4", edgecolor="k", zorder=3)
    rr, cc = np.nonzero(~small)
    ax.scatter(cc, rr, s=120, color="white", edgecolor="#bbbbbb", zorder=3)
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"6 x 6 grid, 4 cells masked out: {len(edges)} 'sense' edges", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "topology.png", dpi=110)
    plt.close(fig)
    print(f"glider moved 8 cells in 32 synchronous steps: {glider_ok}; asynchronous: {int(async_final.sum())} live cells at step 32, "
          f"{'still' if np.array_equal(async_final, pictures['life, asynchronous (fire 0.5)'][1][-2]) else 'changing'}; "
          f"diffusion: {right:.1%} of the heat right of the wall at step 128")
    write_part("grid", {
        "wall_s": {"simulate": sim_s},
        "metrics": {
            "glider_shifted_8_cells_after_32_steps": glider_ok,
            "life_sync_alive_step32": float(sync_frames[-1].sum()),
            "life_async_alive_step32": float(async_final.sum()),
            "life_async_moved": bool(not np.array_equal(async_final, board)),
            "diffusion_heat_right_of_wall_step128": float(right),
        },
        "runs": results,
    })
    return 0


def steps_below(meta_loss: list[float], level: float, width: int = 50) -> int | None:
    """The first meta-step at which the mean meta-loss of the last ``width`` steps is below ``level``."""
    avg = smooth(meta_loss, width)
    hit = np.flatnonzero(avg < level)
    return int(hit[0]) + width if len(hit) else None


def load_learner(prog: mg.Program, path: Path) -> Any:
    """Learner parameters saved by :func:`part_sinusoid` (``learner.npz``), shaped for ``prog``."""
    template = prog.init_params(jax.random.PRNGKey(0))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    with np.load(path) as data:
        values = [jnp.asarray(data[jax.tree_util.keystr(p)]) for p, _ in leaves]
    return jax.tree_util.tree_unflatten(treedef, values)


def cmd_transfer(args) -> int:
    """The paper's transfer (section 4.2): the learner meta-trained on the ReLU net (hybrid part,
    message only) run on the step net, next to the step part's own rows."""
    path = OUT / "step" / "part.json"
    doc = json.loads(path.read_text())
    prog = mg.compile_graph(mplp_feedforward(SIZES, "step", msg=args.msg, hidden=args.hidden))
    fwd = mg.compile_graph(mg.feedforward(SIZES, "step", protocol="none"))
    params = load_learner(prog, OUT / "hybrid" / "message_only" / "learner.npz")
    ev = evaluate(prog, fwd, params, args.runs)["loss"]
    doc["curves"]["MPLP trained on the ReLU net, transferred"] = {"eval_mean": ev.mean(0).tolist(), "eval_std": ev.std(0).tolist()}
    doc["metrics"].update(curve_stats("transfer_from_relu", ev))
    doc["transfer_command"] = "python " + " ".join(["experiments/beyond/run.py", *sys.argv[1:]])
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"[transfer] eval L2 after {K} steps on the step net: {ev[:, K].mean():.4f} +- {ev[:, K].std():.4f}")
    return cmd_replot(args)


def cmd_replot(args) -> int:
    """Redraw the sinusoid parts' figures from their part.json (no training)."""
    for p in ("skip", "step"):
        path = OUT / p / "part.json"
        if path.exists():
            doc = json.loads(path.read_text())
            title = doc.get("title", doc["description"])
            plot_eval_curves({k: (c["eval_mean"], c["eval_std"]) for k, c in doc["curves"].items()}, title, OUT / p / "eval.png")
            plot_meta_loss({doc["graph"]: [{"loss": l, "cv": c} for l, c in zip(doc["meta_loss"], doc["cv"])]}, title, OUT / p / "meta_loss.png")
    for path in [OUT / "hybrid" / "part.json", *sorted(OUT.glob("seed*/hybrid/part.json"))]:
        if path.exists():
            doc = json.loads(path.read_text())
            for name, run in doc["runs"].items():
                plot_eval_curves({k: (c["eval_mean"], c["eval_std"]) for k, c in run["curves"].items()}, run.get("title", name), path.parent / name / "eval.png")
            seed = doc["runs"]["hybrid"]["settings"]["seed"]
            plot_meta_loss({f"{n} ({d['meta_steps']} steps)": [{"loss": l, "cv": c} for l, c in zip(d["meta_loss"], d["cv"])] for n, d in doc["runs"].items()},
                           f"hybrid (loss gradient + learned message) vs message only, (1, 20, 20, 1) ReLU, seed {seed}", path.parent / "meta_loss.png")
    return 0


def cmd_collect(args) -> int:
    names = ("skip", "step", "hybrid", "grid")
    paths = {p: OUT / p / "part.json" for p in names if (OUT / p / "part.json").exists()}
    for extra in sorted(OUT.glob("seed*/hybrid/part.json")):  # the hybrid comparison with other seeds
        paths[f"hybrid_{extra.parent.parent.name}"] = extra
    parts = {p: json.loads(path.read_text()) for p, path in paths.items()}
    metrics: dict[str, Any] = {}
    wall: dict[str, Any] = {}
    for p, doc in parts.items():
        if p.startswith("hybrid"):
            for name, run in doc["runs"].items():
                for k, v in run["metrics"].items():
                    metrics[f"{p}_{name}_{k}"] = v
                metrics[f"{p}_{name}_meta_steps"] = run["meta_steps"]
                for level in (0.02, 0.015):
                    metrics[f"{p}_{name}_steps_to_meta_loss_{level}"] = steps_below(run["meta_loss"], level)
                wall[f"{p}_{name}_meta_train"] = run["wall_s"]["meta_train"]
            continue
        for k, v in doc["metrics"].items():
            metrics[f"{p}_{k}"] = v
        if "meta_steps" in doc:
            metrics[f"{p}_meta_steps"] = doc["meta_steps"]
        wall.update({f"{p}_{k}": v for k, v in doc["wall_s"].items()})
    commit = git_commit()
    doc = {
        "experiment": "beyond",
        "command": " && ".join([d["command"] for d in parts.values()] + [d["transfer_command"] for d in parts.values() if "transfer_command" in d]),
        "git_commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {jax.devices()[0].platform}, 2 cores shared with other jobs, jax {jax.__version__}",
        "runs": 100,
        "wall_s": wall,
        "metrics": metrics,
        "parts": {p: str(path.relative_to(OUT.parent.parent) if OUT == HERE else path) for p, path in paths.items()},
    }
    (OUT / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(metrics, indent=1))
    return 0


SIZES = (1, 20, 20, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("skip", "step", "hybrid", "grid", "transfer", "collect", "replot"))
    ap.add_argument("--steps", type=int, default=1000, help="meta-steps (default 1000)")
    ap.add_argument("--time-budget", type=float, default=None, help="stop meta-training after this many seconds")
    ap.add_argument("--lr", type=float, default=3e-4, help="meta learning rate (default 3e-4)")
    ap.add_argument("--msg", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=15)
    ap.add_argument("--runs", type=int, default=100, help="evaluation runs (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default experiments/beyond)")
    ap.add_argument("--sizes", default="1,20,20,1", help="layer widths of the sinusoid nets (default 1,20,20,1)")
    args = ap.parse_args(argv)
    global OUT, SIZES
    OUT = args.out
    SIZES = tuple(int(s) for s in args.sizes.split(","))
    enable_compilation_cache()
    commands = {"skip": cmd_skip, "step": cmd_step, "hybrid": cmd_hybrid, "grid": cmd_grid, "transfer": cmd_transfer, "collect": cmd_collect, "replot": cmd_replot}
    return commands[args.part](args)


if __name__ == "__main__":
    raise SystemExit(main())
