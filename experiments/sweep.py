"""Meta-train K runs of one experiment config together (seeds x learning-rate multipliers), as one
vmapped program (:func:`mplp_graph.meta.train.meta_train` with ``runs=K``; :mod:`mplp_graph.meta.sweep`).

    python experiments/sweep.py --config experiments/sinusoid/config.yaml --run-dir runs/sin_sweep \\
        --seeds 0 1 2 3 --lr-mults 1 1 3 3 --steps 40000 --time-budget 3600

Run ``i`` uses ``meta.seed = seeds[i]`` and the learning rate ``meta.lr * lr_mults[i]``. Resumable
(checkpoints in ``--run-dir``); ``--time-budget`` (seconds) stops early with a checkpoint.
``--split-runs`` splits the runs over all devices; as a job of several processes (e.g.
``mplp-graph launch --processes 2 -- python experiments/sweep.py ...``; docs/scaling.md) the
runs are always split over every process's devices, and process 0 writes the run folder.
Pick and evaluate a run afterwards with ``experiments/<name>/run.py --from-sweep``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from mplp_graph import distributed
from mplp_graph.cache import enable_compilation_cache
from mplp_graph.config.load import read_value
from mplp_graph.errors import MplpGraphError
from mplp_graph.meta.checkpoint import atomic_write_bytes
from mplp_graph.meta.config import apply_overrides, load_experiment
from mplp_graph.meta.run import build, initial_params, meta_step, write_run_config
from mplp_graph.meta.shard import task_mesh
from mplp_graph.meta.step import make_pool, trainable_mask
from mplp_graph.meta.sweep import stack
from mplp_graph.meta.train import meta_train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--lr-mults", type=float, nargs="+", help="one per seed (default: all 1)")
    ap.add_argument("--steps", type=int, help="override meta.steps")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override config values, e.g. meta.outer_batch=4")
    ap.add_argument("--time-budget", type=float, help="seconds of training before stopping (with a checkpoint)")
    ap.add_argument("--init-params", type=Path,
                    help="start from the learners of another sweep (fresh optimizer state): its params.npz, or its run folder with --init-step")
    ap.add_argument("--init-step", type=int, help="with --init-params RUN_DIR: the step of the kept checkpoint to start from")
    ap.add_argument("--init-runs", type=int, nargs="+", help="which runs of --init-params, one per seed")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--keep", type=int, default=3, help="checkpoints to keep (the newest); a large value keeps them all, for selection on validation")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--split-runs", action="store_true", help="split the runs over all devices (their number must divide the runs)")
    args = ap.parse_args(argv)
    try:
        job = distributed.initialize_from_env()  # a job of several processes (docs/scaling.md), before JAX starts
    except MplpGraphError as e:
        ap.error(str(e))
    main_process = jax.process_index() == 0
    enable_compilation_cache()
    overrides = {"meta.steps": args.steps} if args.steps is not None else {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            ap.error(f"--set {item}: expected SECTION.KEY=VALUE, e.g. meta.outer_batch=4")
        try:  # read as in a config file: 1e-3 is a number, 1e999 an error
            overrides[key] = read_value(value, f"--set {key}")
        except MplpGraphError as e:
            ap.error(str(e))
    try:  # located errors: file:line:col for the config, --set KEY for the overrides
        config, locate = load_experiment(args.config)
        config = apply_overrides(config, overrides, "--set")
    except MplpGraphError as e:
        ap.error(str(e))
    mults = args.lr_mults or [1.0] * len(args.seeds)
    if len(mults) != len(args.seeds):
        ap.error(f"--lr-mults has {len(mults)} values for {len(args.seeds)} seeds")
    t0 = time.perf_counter()
    try:  # the graph (a graph file relative to the config's folder), the task family and its data
        setup = build(config, base_dir=Path(args.config).resolve().parent, locate=locate)
    except MplpGraphError as e:
        ap.error(str(e))
    run_dir = Path(args.run_dir)
    command = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    earlier = _earlier_record(run_dir / "sweep.json")  # a resumed sweep keeps its earlier commands and time
    sweep_doc = {**{k: earlier[k] for k in ("steps_done", "train_wall_s") if k in earlier},
                 "seeds": args.seeds, "lr_mults": mults, "command": command, "commands": earlier.get("commands", []) + [command],
                 "device": str(jax.devices()[0]), "processes": jax.process_count(), "devices": jax.device_count()}
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(setup, run_dir)  # config.yaml (and graph.yaml for a graph file)
        atomic_write_bytes(run_dir / "sweep.json", json.dumps(sweep_doc, indent=1).encode())

    runs = []
    for seed in args.seeds:
        cfg = config.model_copy(update={"meta": config.meta.model_copy(update={"seed": seed})})
        runs.append(initial_params(dataclasses.replace(setup, config=cfg)))
    params = stack(runs)
    if args.init_params is not None:
        from mplp_graph.meta.sweep import load_stacked_params, sweep_checkpoints

        picked = args.init_runs or list(range(len(args.seeds)))
        if len(picked) != len(args.seeds):
            ap.error(f"--init-runs has {len(picked)} values for {len(args.seeds)} seeds")
        if args.init_params.is_dir():
            kept = dict(sweep_checkpoints(args.init_params, runs[0]))
            if args.init_step not in kept:
                ap.error(f"--init-params {args.init_params}: no kept checkpoint at --init-step {args.init_step}; kept steps: {sorted(kept)}")
            loaded = kept[args.init_step]
        else:
            if args.init_step is not None:
                ap.error("--init-step needs --init-params RUN_DIR (a sweep's run folder with its checkpoints)")
            loaded = load_stacked_params(runs[0], args.init_params)
        params = jax.tree_util.tree_map(lambda a: a[jnp.asarray(picked)], loaded)
        sweep_doc["init_params"] = {"file": str(args.init_params), "step": args.init_step, "runs": picked}
    m = config.meta
    pools = stack([make_pool(setup.prog, jax.random.PRNGKey(s + 1), m.pool) for s in args.seeds])
    keys = stack([jax.random.PRNGKey(s + 2) for s in args.seeds])
    mask = trainable_mask(runs[0], freeze=config.meta.freeze)
    print(f"setup {time.perf_counter() - t0:.1f} s; {len(args.seeds)} runs on {jax.devices()[0]}", flush=True)
    t1 = time.perf_counter()
    step_fn, mesh = meta_step(setup), None
    if args.split_runs or job is not None:  # the runs, not each run's outer batch, are split over the devices
        if len(args.seeds) % jax.device_count():
            ap.error(f"{len(args.seeds)} runs cannot be split over {jax.device_count()} devices; give a multiple of {jax.device_count()} seeds")
        step_fn, mesh = dataclasses.replace(step_fn, mesh=None, prog=setup.prog), task_mesh()
    try:
        _, history = meta_train(
            step_fn, params, mask, pools, keys, m.steps, run_dir, runs=len(args.seeds), lr_mult=mults, data=setup.data,
            time_budget=args.time_budget, checkpoint_every=m.checkpoint_every, log_every=args.log_every, keep=args.keep,
            progress=not args.no_progress, meta={"experiment": config.experiment, **sweep_doc}, mesh=mesh,
        )
    except distributed.LostProcessError as e:
        distributed.exit_lost(e)
    if not main_process:
        return 0
    wall = time.perf_counter() - t1
    last = history[-1] if history else {}
    done = last.get("step", earlier.get("steps_done", 0))  # no new row: a resumed run that had nothing left to do
    total = wall + earlier.get("train_wall_s", 0.0)
    sweep_doc.update({"steps_done": done, "train_wall_s": round(total, 1), "last": last})
    atomic_write_bytes(run_dir / "sweep.json", json.dumps(sweep_doc, indent=1).encode())
    print(json.dumps({"steps_done": done, "train_wall_s": round(wall, 1), "last_loss": last.get("loss"), "step_s": last.get("step_s")}), flush=True)
    return 0


def _earlier_record(path: Path) -> dict:
    """The ``sweep.json`` of an earlier invocation on the same run folder (resumed from its
    checkpoint), with ``commands`` listing every command so far; ``{}`` for a new folder."""
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    doc.setdefault("commands", [doc["command"]] if "command" in doc else [])
    return doc


if __name__ == "__main__":
    raise SystemExit(main())
