"""The ``mplp-graph`` command line: thin, it parses arguments and calls the API.

Subcommands::

    mplp-graph validate FILE...   load and verify graph files; report every file
    mplp-graph inspect FILE       print the graph and its compile report
    mplp-graph ops [NAME...]      the registered ops, their inputs and arguments
    mplp-graph draw FILE -o OUT   draw the topology (.png, .svg, .pdf or .dot)
    mplp-graph view FILE -o OUT   an interactive, offline HTML page of the graph (--trace: a replay)
    mplp-graph trace FILE -o OUT  record a run step by step (fields, messages, metrics)
    mplp-graph train CONFIG       meta-train from an experiment config (resumable; one process of
                                  a job when JAX_COORDINATOR_ADDRESS etc. are set, docs/scaling.md)
    mplp-graph launch -n N -- CMD run CMD as a job of N processes on this machine
    mplp-graph eval RUN_DIR       evaluate a trained run against its baselines; JSON + plot
    mplp-graph reference FILE     load a published learner file (--graph sinusoid|maml|mnist)
    mplp-graph demo               meta-train a small MPLP learner, compare it with Adam
    mplp-graph backprop           train the sinusoid net with the backprop protocol

Exit status: 0 on success, 2 on a user error (a bad graph file, a missing file, bad arguments,
a numeric option out of range), with a one-line message per problem on stderr that says where
it is; never a traceback for those; 3 when another process of a multi-process job was lost
(mplp_graph.distributed). Anything else is a bug and is left to raise.
``mplp-graph --version`` prints the installed version.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Sequence

from mplp_graph.errors import MplpGraphError

EXIT_OK = 0
EXIT_USER_ERROR = 2  # argparse's own status for bad arguments; used for every user error

# The demo net: the paper's sinusoid regressor (section 4.1), trained by the backprop protocol.
DEMO_SIZES = (1, 20, 20, 1)
DEMO_ACTIVATION = "relu"
DEMO_LOSS = "l2"
DEMO_LR = 0.05
DEMO_BATCH = 10  # inner batch size of the paper's sinusoid experiments
DEMO_TASKS = 4  # tasks trained side by side (vmap), each with its own sinusoid and prior
DEMO_REPORT_EVERY = 50


class UserError(Exception):
    """A problem the user can fix; ``main`` prints it and exits with status 2."""


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low`` (argparse prints the message, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"  # argparse names the type in some messages
    return parse


POSITIVE = _int_at_least(1)
NON_NEGATIVE = _int_at_least(0)


def _positive_real(text: str) -> float:
    """An argparse ``type``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


_positive_real.__name__ = "number > 0"
POSITIVE_REAL = _positive_real


def _user_message(err: BaseException, path: str | None = None) -> str:
    """One line per problem, each starting with where it is."""
    if isinstance(err, OSError):
        where = err.filename if err.filename is not None else path
        return f"{where}: cannot read: {err.strerror or err}"
    text = str(err)
    if path and not text.startswith(path):
        lines = text.splitlines() or [""]
        text = "\n".join([f"{path}: {lines[0]}"] + lines[1:])
    return text


def _load(path: str) -> Any:
    """Load and verify one graph file; raises :class:`UserError` with a located message."""
    from mplp_graph import load_graph  # lazy: the loader pulls in YAML and pydantic machinery

    try:
        return load_graph(path)
    except (MplpGraphError, OSError) as e:
        raise UserError(_user_message(e, path)) from None


# ---------------------------------------------------------------------------------------------
# validate


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            spec = _load(path)
        except UserError as e:
            print(str(e), file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: ok (graph {spec.name!r}: {len(spec.groups)} groups, {len(spec.arrows)} arrows)")
    if failed:
        print(f"{failed} of {len(args.files)} file(s) failed validation", file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# inspect


def _shard_axes(items: list[str]) -> dict[str, int]:
    """``--shard GROUP:AXIS`` options -> ``{group: axis}``."""
    axes = {}
    for item in items:
        group, sep, axis = item.rpartition(":")
        if not sep or not group or not axis.isdigit():
            raise UserError(f"--shard {item}: expected GROUP:AXIS, a group name and an agent axis (e.g. --shard cell:0)")
        axes[group] = int(axis)
    return axes


def cmd_inspect(args: argparse.Namespace) -> int:
    import mplp_graph as mg

    spec = _load(args.file)
    axes = _shard_axes(args.shard or [])
    if args.cpu_devices is not None:
        import jax

        jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before JAX starts its CPU backend
    print(mg.format_graph(spec))
    try:
        prog = mg.compile_graph(spec)
        if axes:
            from mplp_graph.compile.partition import device_mesh

            prog = prog.shard_agents(device_mesh(1), axes)
        report = prog.report(batch_size=args.batch)
    except MplpGraphError as e:
        raise UserError(_user_message(e, args.file)) from None
    print()
    print(report)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# ops


def cmd_ops(args: argparse.Namespace) -> int:
    """List the registered ops (built-in, learners) with their inputs and arguments."""
    import mplp_graph as mg
    from mplp_graph.ir.verify import suggest
    from mplp_graph.ops.registry import describe_args

    if args.markdown:
        print(mg.op_table(), end="")
        return EXIT_OK
    names = args.names or mg.op_names()
    unknown = [n for n in names if n not in mg.op_names()]
    if unknown:
        raise UserError("; ".join(f"unknown op {n!r}.{suggest(n, mg.op_names())}" for n in unknown) + " ('mplp-graph ops' lists them all)")
    for name in names:
        op = mg.get_op(name)
        arity = "any number of inputs" if op.arity is None else f"{op.arity} input{'s' if op.arity != 1 else ''}"
        print(f"{name} ({arity}{'' if op.differentiable else ', no gradient'}): {op.doc}")
        for r in describe_args(op):
            print(f"    {r['name']}: {r['type']}, {r['default']}" + (f"; {r['description']}" if r["description"] else ""))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# draw, train, eval


def cmd_draw(args: argparse.Namespace) -> int:
    import mplp_graph as mg

    spec = _load(args.file)
    if not args.output.lower().endswith((".png", ".svg", ".pdf", ".dot")):
        raise UserError(f"-o {args.output}: expected a .png, .svg, .pdf or .dot file name")
    try:
        mg.draw_graph(spec, args.output, expand=args.expand, phase=args.phase)
    except (ValueError, MplpGraphError) as e:
        raise UserError(f"{args.file}: {e}") from None
    print(f"wrote {args.output}")
    return EXIT_OK


def _graph_source(path: str):
    """(spec, is_config) of a graph file or an experiment config, with located errors."""
    from mplp_graph.viz.trace import load_source

    try:
        return load_source(path)
    except (MplpGraphError, OSError) as e:
        raise UserError(_user_message(e, path)) from None


def cmd_view(args: argparse.Namespace) -> int:
    from mplp_graph.viz.html import view

    if not args.output.lower().endswith((".html", ".htm")):
        raise UserError(f"-o {args.output}: expected an .html file name")
    spec, _ = _graph_source(args.file)
    try:
        out = view(spec, args.output, trace=args.trace, max_agents=args.max_agents)
    except MplpGraphError as e:
        raise UserError(_user_message(e)) from None
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1e6:.2f} MB): open it in a browser (no network or server needed)")
    return EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    from mplp_graph.viz.trace import record_config, record_graph, write_trace

    spec, is_config = _graph_source(args.file)
    common = dict(fields=args.field or (), arrows=args.arrow or (), example=args.example, max_mb=args.max_mb)
    try:
        if is_config:
            if args.inputs or args.init or args.random_init or args.batch is not None:
                raise UserError(f"{args.file} is an experiment config: its task family gives the batches and the prior; --inputs, --init, "
                                "--random-init and --batch are for graph files")
            trace = record_config(args.file, learner=args.learner, run_dir=args.run_dir, steps=args.steps, seed=args.seed, split=args.split,
                                  **common)
        else:
            if args.learner or args.run_dir:
                raise UserError(f"{args.file} is a graph file: --learner and --run-dir need an experiment config (experiments/*/config.yaml)")
            trace = record_graph(spec, steps=20 if args.steps is None else args.steps, batch=args.batch or 1, seed=args.seed or 0,
                                 inputs=args.inputs, init=args.init, random_init=args.random_init or (), source={"graph": args.file}, **common)
    except MplpGraphError as e:
        raise UserError(_user_message(e)) from None
    out = write_trace(args.output, trace)
    names = ", ".join(r.name for r in trace.records)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {trace.steps} steps of graph {trace.graph_name!r}; recorded {names}; "
          f"metrics {', '.join(trace.metrics) or 'none'}")
    print(f"replay it: mplp-graph view {args.file} --trace {out} -o run.html")
    return EXIT_OK


def _setup(config_path: str, steps: int | None = None):
    """The run setup of an experiment config (graph, task family, data), every problem a
    :class:`UserError` naming file, line and key."""
    from mplp_graph.meta.run import load_setup

    if not os.path.isfile(config_path):
        raise UserError(f"{config_path}: no such file; give an experiment config (e.g. experiments/sinusoid/config.yaml)")
    try:
        setup = load_setup(config_path)
    except MplpGraphError as e:
        raise UserError(_user_message(e)) from None
    if steps is not None:
        import dataclasses

        config = setup.config.model_copy(update={"meta": setup.config.meta.model_copy(update={"steps": steps})})
        setup = dataclasses.replace(setup, config=config)
    return setup


def _join_job() -> Any:
    """Join a job of several processes when the environment describes one (docs/scaling.md);
    None for a single process."""
    from mplp_graph import distributed

    try:
        return distributed.initialize_from_env()
    except MplpGraphError as e:
        raise UserError(f"mplp-graph: {e}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from mplp_graph import distributed
    from mplp_graph.meta.run import train

    job = _join_job()  # before JAX starts its backend
    setup = _setup(args.config, args.steps)  # checked whole before the run folder is touched
    try:
        params, history = train(setup, args.run_dir, resume=args.resume, progress=not args.no_progress)
    except distributed.LostProcessError as e:
        distributed.exit_lost(e)
    if job is not None and not distributed.is_main_process():
        return EXIT_OK  # process 0 reports
    last = history[-1] if history else {}
    parts = ", ".join(f"{k} {last[k]:.5f}" for k in last if k not in ("step", "step_s", "finite", "grad_norm"))  # the meta-loss and its parts
    procs = f" by {job.num_processes or 'the'} processes" if job is not None else ""
    print(f"meta-trained {setup.prog.spec.name!r} to step {setup.config.meta.steps}{procs} ({parts}); metrics and checkpoints in {args.run_dir}")
    return EXIT_OK


def cmd_launch(args: argparse.Namespace) -> int:
    """Start COMMAND as a job of N processes on this machine (docs/scaling.md): each gets
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; output lines are prefixed
    with the process id; when one process fails, the others are stopped after --grace seconds."""
    from mplp_graph.launch import launch

    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError("launch: give the command after --, e.g. mplp-graph launch --processes 2 -- mplp-graph train CONFIG")
    if args.port is not None and not 0 < args.port < 65536:
        raise UserError(f"--port must be a TCP port (1-65535), got {args.port}")
    try:
        return launch(command, args.processes, port=args.port, grace=args.grace)
    except FileNotFoundError as e:
        raise UserError(f"launch: {e.strerror}") from None


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mplp_graph.meta.run import evaluate, load_trained, write_results

    if args.learner is not None or args.config is not None:
        if args.run_dir is not None or args.learner is None or args.config is None or args.out is None:
            raise UserError("evaluate a saved learner with --config CONFIG.yaml --learner FILE.npz --out FOLDER (and no RUN_DIR)")
        setup, params, step = _saved_learner(args.config, args.learner)
        source = f"--config {args.config} --learner {args.learner}"
    else:
        if args.run_dir is None:
            raise UserError("give RUN_DIR (a folder written by 'train'), or --config CONFIG.yaml --learner FILE.npz --out FOLDER")
        if not os.path.isdir(args.run_dir):
            raise UserError(f"{args.run_dir}: no such run folder")
        try:
            setup, params, step = load_trained(args.run_dir)
        except (FileNotFoundError, MplpGraphError) as e:
            raise UserError(_user_message(e)) from None
        source = args.run_dir
    if args.tune:
        setup = _tuned_setup(setup)
    if setup.config.eval.tune and (args.split or setup.config.eval.split) != "test":
        raise UserError(f"eval.tune (or --tune) chooses the baselines' rates on the validation split and reports them on the test split: "
                        f"drop --split {args.split}, or evaluate without tuning")
    out = Path(args.out or args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = f"mplp-graph eval {source}" + (f" --runs {args.runs}" if args.runs else "") + (f" --split {args.split}" if args.split else "")
    command += (" --tune" if args.tune else "") + (f" --out {args.out}" if args.out else "")
    if args.transfers:
        if setup.config.task.family != "mnist" or setup.config.graph.file is not None:
            raise UserError("--transfers applies to the MNIST template configs (task.family: mnist, no graph.file) only")
        command += " --transfers" + (f" --runs-784 {args.runs_784}" if args.runs_784 is not None else "")
        return _eval_mnist(setup, params, step, out, command, args.runs, args.runs_784)
    results = evaluate(setup, params, runs=args.runs, split=args.split)
    doc = write_results(setup, results, out, command=command, meta_steps=step, train_s=None)
    for k, v in doc["metrics"].items():
        print(f"{k}: {v}")
    pictures = ("growth.png", "growth.gif") if setup.config.rollout is not None else ("eval.png",)
    files = [str(out / name) for name in ("results.json", *pictures)]
    print(f"wrote {', '.join(files[:-1])} and {files[-1]}")
    return EXIT_OK


def _tuned_setup(setup):
    """``setup`` with ``eval.tune`` set (``eval --tune``), the config checked again."""
    import dataclasses

    from mplp_graph.meta.config import apply_overrides

    try:
        config = apply_overrides(setup.config, {"eval.tune": True}, source="--tune")
    except MplpGraphError as e:
        raise UserError(_user_message(e)) from None
    return dataclasses.replace(setup, config=config)


def _saved_learner(config_path: str, learner_path: str):
    """(setup, params, None) for a config file and a learner .npz, with located errors."""
    from mplp_graph.meta.run import load_params_file

    if not os.path.isfile(learner_path):
        raise UserError(f"{learner_path}: no such file")
    setup = _setup(config_path)
    try:
        params = load_params_file(setup, learner_path)
    except (ValueError, OSError) as e:
        raise UserError(f"{e} (is {learner_path} a learner for the graph of {config_path}?)") from None
    return setup, params, None


def _eval_mnist(setup, params, step, out, command: str, runs: int | None = None, runs_784: int | None = None) -> int:
    """The paper's Table 1 (paper section 4.2): MPLP, the config's baselines, the step
    activation and (784, 100, 10): accuracy after each step (Fig. 4)."""
    import jax

    from mplp_graph.meta.checkpoint import atomic_write_json
    from mplp_graph.meta.eval_mnist import plot_accuracy, table1
    from mplp_graph.meta.run import baseline_optimizers, git_commit, tune_baselines, tuned_optimizers
    from mplp_graph.tasks.mnist import DATASETS

    c = setup.config
    runs = runs or c.eval.runs
    tuning = tune_baselines(setup, runs=runs) if c.eval.tune else None
    chosen = tuned_optimizers(tuning) if tuning else baseline_optimizers(c)
    baselines = dict(chosen.values())
    metrics, curves, wall = table1(setup, params, jax.random.PRNGKey(c.eval.seed), runs, baselines=baselines, runs_784=runs_784,
                                   split=c.eval.split)
    metrics["meta_steps"] = step
    doc = {"experiment": c.experiment, "command": command, "git_commit": git_commit(), "runs": runs,
           "metrics": metrics, "wall_s": wall, "curves": curves, "config": c.to_json()}
    if tuning is not None:
        doc["tuning"] = tuning
    atomic_write_json(out / "results.json", doc)
    plot_accuracy(curves, out / "mnist.png", labels={key: label for label, (key, _) in chosen.items()},
                  data=DATASETS[c.task.dataset].title)
    for k, v in metrics.items():
        print(f"{k}: {v}")
    print(f"wrote {out / 'results.json'} and {out / 'mnist.png'}")
    return EXIT_OK


REFERENCE_GRAPHS = {
    "sinusoid": dict(sizes=(1, 20, 20, 1)),
    "maml": dict(sizes=(1, 20, 20, 1), learner="mlp"),
    "mnist": dict(sizes=(144, 50, 10), activation="sigmoid", loss="ce", msg=4, hidden=7, sharing="layers"),
}


def cmd_reference(args: argparse.Namespace) -> int:
    """Load one of the authors' published learner files into the matching graph, check its layout,
    and save the engine's parameters as an .npz (the files are the authors' ``mplp/savedmodels/*.npy``;
    their layout: :mod:`mplp_graph.reference`)."""
    import jax

    import mplp_graph as mg
    from mplp_graph.meta.checkpoint import save_params_file
    from mplp_graph.templates.mplp import mplp_feedforward

    if not os.path.isfile(args.file):
        raise UserError(f"{args.file}: no such file")
    prog = mg.compile_graph(mplp_feedforward(**REFERENCE_GRAPHS[args.graph]))
    try:
        params = mg.load_reference_learner(args.file, prog)
    except (MplpGraphError, ValueError) as e:
        raise UserError(str(e)) from None
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(f"{args.file}: {n:,} numbers loaded into graph {prog.spec.name}")
    for key, part in params.items():
        if "norm" in part and "out_scale" in part["norm"]:
            print(f"  {key:12s} out_scale {float(part['norm']['out_scale']):.4f}")
    if args.output:
        save_params_file(args.output, params)
        print(f"wrote {args.output}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# demo


def _direct_mlp_step(params: Any, x: Any, y: Any, lr: float) -> tuple[Any, Any]:
    """The demo net in plain jax.numpy: ``jax.grad`` of the batch-mean L2 loss, then SGD.

    params: ((W (n_in, n_out), b (n_out,)), ...); x (B, 1); y (B, 1). Returns (params, loss).
    """
    import jax
    import jax.numpy as jnp

    def loss_fn(ps):
        h = x
        for k, (w, b) in enumerate(ps):
            h = h @ w + b  # (B, n_out)
            if k < len(ps) - 1:
                h = jax.nn.relu(h)
        return jnp.mean(jnp.sum(0.5 * (y - h) ** 2, axis=-1))  # the graph's l2 node, batch mean

    loss, grads = jax.value_and_grad(loss_fn)(params)
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), loss


def cmd_demo(args: argparse.Namespace) -> int:
    """Meta-train a small MPLP learner on sinusoid regression from scratch, then evaluate it (and
    the learner of the repository's recorded run, if present) against Adam(0.01) over 100 runs.

    The paper's setup (section 4.1.1): a (1, 20, 20, 1) ReLU net whose backward pass is a learned
    stateful protocol; 5 inner steps of batch 10. Prints a table, writes a plot to OUT/demo.png.
    """
    from mplp_graph.meta.demo import run_demo

    run_demo(args.meta_steps, args.runs, args.out, args.seed, progress=not args.no_progress)
    return EXIT_OK


def cmd_backprop(args: argparse.Namespace) -> int:
    """Train the (1, 20, 20, 1) relu net on sinusoid tasks with the backprop protocol, compiled
    by the engine, next to the same training written with ``jax.grad``; print the losses.

    Each task (paper section 4.1: A in [0.1, 0.5], phase in [0, pi], x in [-5, 5]) gets its own
    random prior and a fresh batch of 10 points per step; tasks run side by side under ``vmap``
    and the steps under ``jax.lax.scan``, as meta-training will run them.
    """
    import jax
    import jax.numpy as jnp

    import mplp_graph as mg
    from mplp_graph.tasks.sinusoid import SinusoidFamily

    spec = mg.feedforward(DEMO_SIZES, DEMO_ACTIVATION, DEMO_LOSS, lr=DEMO_LR)
    prog = mg.compile_graph(spec)
    n_layers = len(DEMO_SIZES) - 1
    key = jax.random.PRNGKey(args.seed)
    k_init, k_tasks = jax.random.split(key)
    family = SinusoidFamily(inner_steps=args.steps, batch=DEMO_BATCH)
    tasks = jax.vmap(family.sample)(jax.random.split(k_tasks, DEMO_TASKS))
    xs = jnp.swapaxes(tasks["xt"], 0, 1)  # (T, tasks, B, 1)
    ys = jnp.swapaxes(tasks["yt"], 0, 1)
    state0 = jax.vmap(lambda k: prog.init(k, DEMO_BATCH))(jax.random.split(k_init, DEMO_TASKS))
    graph_params = prog.init_params(k_init)  # {}: the backprop protocol has no learned parts

    def net_params(state):  # the weights and biases the graph's agents hold
        return tuple((state[f"W{k}"]["w"], state[f"b{k}"]["b"]) for k in range(n_layers))

    def engine_step(state, batch):
        state, out = jax.vmap(lambda s, x, y: prog.step(graph_params, s, {"x": x, "y": y}))(state, *batch)
        return state, jnp.mean(jnp.sum(out["loss"], axis=-1), axis=-1)  # (tasks,) batch-mean loss

    def direct_step(params, batch):
        return jax.vmap(lambda p, x, y: _direct_mlp_step(p, x, y, DEMO_LR))(params, *batch)

    @jax.jit
    def run_engine(state, xs, ys):
        return jax.lax.scan(engine_step, state, (xs, ys))

    @jax.jit
    def run_direct(params, xs, ys):
        return jax.lax.scan(direct_step, params, (xs, ys))

    timings = {}
    results = {}
    for name, fn, init in (("engine", run_engine, state0), ("jax.grad", run_direct, net_params(state0))):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(init, xs, ys))  # compile + first run
        t1 = time.perf_counter()
        results[name] = jax.block_until_ready(fn(init, xs, ys))
        timings[name] = (t1 - t0, time.perf_counter() - t1)
    final_state, engine_losses = results["engine"]
    final_params, direct_losses = results["jax.grad"]
    engine_curve = jnp.mean(engine_losses, axis=1)  # (T,) mean over tasks
    direct_curve = jnp.mean(direct_losses, axis=1)

    print(f"demo: {spec.name}, backprop protocol, lr {DEMO_LR}, {DEMO_TASKS} sinusoid tasks, batch {DEMO_BATCH}, "
          f"{args.steps} steps, seed {args.seed}")
    print(f"{'step':>6}  {'engine loss':>12}  {'jax.grad loss':>13}  {'ratio':>7}")
    rows = sorted({1, *range(DEMO_REPORT_EVERY, args.steps + 1, DEMO_REPORT_EVERY), args.steps})
    for step in rows:
        lo = max(0, step - DEMO_REPORT_EVERY) if step > 1 else 0
        e = float(jnp.mean(engine_curve[lo:step]))  # mean training loss over the steps since the last row
        d = float(jnp.mean(direct_curve[lo:step]))
        print(f"{step:>6}  {e:>12.5f}  {d:>13.5f}  {e / d:>7.4f}")
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree_util.tree_leaves(net_params(final_state)), jax.tree_util.tree_leaves(final_params))
    )
    (ce, re), (cd, rd) = timings["engine"], timings["jax.grad"]
    print(f"max |engine - jax.grad| over final parameters: {diff:.2e}")
    print(f"time: engine {re * 1e3:.1f} ms (compile+first run {ce:.2f} s), "
          f"jax.grad {rd * 1e3:.1f} ms (compile+first run {cd:.2f} s), ratio {re / rd:.2f}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# argument parsing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mplp-graph",
        description="A graph-of-agents engine for message passing learning protocols (MPLP).",
    )
    from mplp_graph import __version__

    parser.add_argument("--version", action="version", version=f"mplp-graph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("validate", help="load and verify graph files", description="Load and verify graph YAML files; report every file.")
    p.add_argument("files", nargs="+", metavar="FILE", help="graph YAML file(s)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("inspect", help="print a graph and its compile report", description="Print a graph file's groups and arrows, then its compile report.")
    p.add_argument("file", metavar="FILE", help="graph YAML file")
    p.add_argument("--batch", type=POSITIVE, default=1, help="batch size for the report's shapes and FLOPs (default 1)")
    p.add_argument("--shard", action="append", metavar="GROUP:AXIS", help="split this agent axis of this group over all devices (repeatable); "
                   "the report lists the split groups and the collectives XLA inserted (docs/scaling.md)")
    p.add_argument("--cpu-devices", type=POSITIVE, default=None, metavar="N", help="simulate N CPU devices (to see a split on a machine without accelerators)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("ops", help="list the registered ops and their arguments", description=cmd_ops.__doc__)
    p.add_argument("names", nargs="*", metavar="NAME", help="only these ops")
    p.add_argument("--markdown", action="store_true", help="the op table of docs/yaml.md (Markdown)")
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("draw", help="draw a graph's topology", description="Draw a graph file's topology: groups (or agents, with --expand) and arrows, left to right along the forward schedule.")
    p.add_argument("file", metavar="FILE", help="graph YAML file")
    p.add_argument("-o", "--output", required=True, help="output file: .png, .svg, .pdf, or .dot (Graphviz)")
    p.add_argument("--expand", action="store_true", help="one node per agent (small graphs only)")
    p.add_argument("--phase", default=None, help="draw only the arrows of this phase (e.g. forward, backward)")
    p.set_defaults(func=cmd_draw)

    p = sub.add_parser("view", help="an interactive offline HTML page of a graph (and a replay of a trace)",
                       description="Write one self-contained HTML file (no network, no server) showing the graph's groups and arrows along the "
                       "schedule, its kernels, its agents (click a group), and with --trace a replay of a recorded run: a time slider, heatmaps "
                       "of fields and messages per agent, loss and metric curves. FILE: a graph file or an experiment config. See docs/view.md.")
    p.add_argument("file", metavar="FILE", help="graph YAML file or experiment config")
    p.add_argument("-o", "--output", required=True, help="output .html file")
    p.add_argument("--trace", default=None, help="a trace of this graph written by 'mplp-graph trace' (adds the replay)")
    p.add_argument("--max-agents", type=POSITIVE, default=1024, help="agents shown when a group is expanded (a leading window; default 1024)")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("trace", help="record a run step by step for 'mplp-graph view --trace'",
                       description="Record a run step by step: chosen fields of groups and the messages of arrows (default: the fields that "
                       "persist between steps and every arrow's message) and the loss and metrics after each step, into a compact file (npz + "
                       "JSON manifest). FILE: an experiment config (one inner loop of its learned protocol on one task: run 0 of 'mplp-graph "
                       "eval' with the same seed) or a graph file (Program.step from its initial state: a cellular automaton, a backprop "
                       "net with --inputs). See docs/view.md.")
    p.add_argument("file", metavar="FILE", help="experiment config or graph YAML file")
    p.add_argument("-o", "--output", required=True, help="output trace file (e.g. run.trace)")
    p.add_argument("--field", action="append", metavar="GROUP.FIELD", help="record this field (repeatable)")
    p.add_argument("--arrow", action="append", metavar="ARROW", help="record the message of this arrow (repeatable)")
    p.add_argument("--steps", type=POSITIVE, default=None, help="steps to record (config: at most the task's inner steps, the default; graph: default 20)")
    p.add_argument("--example", type=NON_NEGATIVE, default=0, help="which example of the batch per-example fields show (default 0)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=None, help="random seed (config: default eval.seed; graph: default 0)")
    p.add_argument("--max-mb", type=POSITIVE_REAL, default=50.0, help="refuse a trace larger than this many MB (default 50)")
    p.add_argument("--learner", default=None, help="config: learner parameters (.npz) to run; default untrained")
    p.add_argument("--run-dir", default=None, help="config: use the newest checkpoint of this training run folder")
    p.add_argument("--split", choices=("test", "validation"), default=None, help="config: the task split (default eval.split)")
    p.add_argument("--batch", type=POSITIVE, default=None, help="graph: batch size (default 1)")
    p.add_argument("--inputs", default=None, help="graph: .npz with one array per batch key (the batch, or one batch per step)")
    p.add_argument("--init", default=None, help="graph: .npz of initial field values, keys group.field (stored shapes)")
    p.add_argument("--random-init", action="append", metavar="GROUP.FIELD=DIST", help="graph: draw a field's initial value: bernoulli:P, uniform:LO:HI or normal:STD (repeatable)")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("train", help="meta-train from an experiment config", description="Meta-train from an experiment config (YAML, see experiments/sinusoid/config.yaml; any graph with learner arrows through graph.file, see docs/custom-graph.md): progress bar, metrics.jsonl, checkpoints; resumes from the latest checkpoint in RUN_DIR unless --no-resume.")
    p.add_argument("config", metavar="CONFIG", help="experiment config YAML")
    p.add_argument("--run-dir", default="runs/train", help="folder for metrics and checkpoints (default runs/train)")
    p.add_argument("--steps", type=POSITIVE, default=None, help="override meta.steps")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start from scratch even if RUN_DIR has checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "launch", help="run a command as a job of several processes on this machine",
        description=cmd_launch.__doc__.replace("\n", " ") + " Example: mplp-graph launch --processes 2 -- mplp-graph train experiments/sinusoid/config.yaml",
    )
    p.add_argument("--processes", "-n", type=POSITIVE, required=True, help="how many processes")
    p.add_argument("--port", type=POSITIVE, default=None, help="the coordinator's TCP port (default: a free one)")
    p.add_argument("--grace", type=POSITIVE_REAL, default=60.0, help="seconds the others get to stop after one fails (default 60)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command every process runs")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser(
        "eval", help="evaluate a trained run against its baselines",
        description="Evaluate the latest checkpoint of RUN_DIR, or a saved learner (--config and --learner), with the task family's "
        "protocol against the config's baselines (eval.baselines, default Adam(0.01)); write results.json and eval.png. MNIST with "
        "--transfers: the paper's Table 1 (results.json, mnist.png). Example without retraining: "
        "mplp-graph eval --config experiments/mnist/config.yaml --learner experiments/mnist/learner.npz --transfers --out /tmp/mnist",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="a folder written by 'train'")
    p.add_argument("--config", help="an experiment config (YAML), with --learner instead of RUN_DIR")
    p.add_argument("--learner", help="learner parameters (.npz, e.g. experiments/mnist/learner.npz) for --config's graph")
    p.add_argument("--runs", type=POSITIVE, default=None, help="override eval.runs")
    p.add_argument("--split", choices=("test", "validation"), default=None, help="override eval.split (validation: model selection)")
    p.add_argument("--tune", action="store_true", help="set eval.tune: choose each baseline's rate among eval.baselines on the validation "
                   "split, evaluate only the chosen one on the test split (results.json records the grid)")
    p.add_argument("--transfers", action="store_true", help="MNIST: also the step activation and the (784, 100, 10) transfer (Table 1)")
    p.add_argument("--runs-784", type=NON_NEGATIVE, default=None, help="MNIST: runs of the (784, 100, 10) transfer (default: --runs; 0 skips it)")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR; required with --learner)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("reference", help="load a published learner file into the engine", description=cmd_reference.__doc__.replace("\n", " "))
    p.add_argument("file", metavar="FILE", help="a flat .npy file from the authors' savedmodels")
    p.add_argument("--graph", choices=sorted(REFERENCE_GRAPHS), required=True, help="which published setup the file belongs to")
    p.add_argument("-o", "--output", default=None, help="save the engine's parameters here (.npz)")
    p.set_defaults(func=cmd_reference)

    p = sub.add_parser("demo", help="meta-train a small MPLP learner and compare it with Adam", description=cmd_demo.__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--meta-steps", type=POSITIVE, default=150, help="meta-training steps (default 150)")
    p.add_argument("--runs", type=POSITIVE, default=100, help="evaluation runs (default 100)")
    p.add_argument("--out", default="mplp-demo", help="output folder (default mplp-demo)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("backprop", help="train the sinusoid net with the backprop protocol next to jax.grad", description=cmd_backprop.__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--steps", type=POSITIVE, default=300, help="training steps (default 300)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_backprop)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (``--help`` and argument errors exit via SystemExit)."""
    args = build_parser().parse_args(argv)
    if args.command in ("train", "eval", "demo", "backprop", "trace"):
        from mplp_graph.cache import enable_compilation_cache

        enable_compilation_cache()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UserError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USER_ERROR
    except MplpGraphError as e:  # raised outside a file (e.g. by the demo's template): no location to add
        print(f"mplp-graph {args.command}: {_user_message(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
