"""End-to-end runs from an :class:`ExperimentConfig`: build, initialise statistics, meta-train
(resumable), evaluate against Adam, write JSON and plots."""

from __future__ import annotations

import importlib
import inspect
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
import yaml

from mplp_graph.runtime.program import Program, compile_graph
from mplp_graph.errors import ConfigError, GraphSpecError, Location, MplpGraphError
from mplp_graph.ir.spec import GraphSpec, ScheduleSpec
from mplp_graph.meta.checkpoint import atomic_write_bytes, atomic_write_json, latest_checkpoint, load_checkpoint, load_params_like
from mplp_graph.meta.config import ExperimentConfig, load_experiment
from mplp_graph.meta.evaluate import evaluate_mplp, evaluate_optax
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.stats import init_statistics
from mplp_graph.meta.step import MetaStep, adam, make_pool, trainable_mask
from mplp_graph.meta.train import FAST_COMPILE, meta_train
from mplp_graph.ir.layout import stored_shape
from mplp_graph.runtime.state import agent_params
from mplp_graph.tasks.base import TASK_KEYS, check_family, lower_is_better
from mplp_graph.templates.feedforward import feedforward
from mplp_graph.templates.mplp import mplp_feedforward

# the built-in task families, by the name an experiment config gives them
FAMILIES = {
    "sinusoid": "mplp_graph.tasks.sinusoid:SinusoidFamily",
    "mnist": "mplp_graph.tasks.mnist:MnistFamily",
    "sequence": "mplp_graph.tasks.sequence:SineContinuation",
    "linear": "mplp_graph.tasks.linear:LinearTeacher",
}
LEARNER_HOW_TO = "docs/custom-graph.md, 'Making it MPLP-trained'"


@dataclass(frozen=True)
class Setup:
    """Everything a run needs, built from its config by :func:`build`."""

    config: ExperimentConfig
    prog: Program  # the net trained by the learned protocol
    fwd: Program  # the same net, forward only (baselines, evaluation)
    family: Any  # a TaskFamily (mplp_graph.tasks.base)
    data: Any = None  # the family's arrays (family.load()), None for synthetic families
    base_dir: Path | None = None  # the config file's folder (relative paths)

    def sample(self, key: Any) -> dict[str, Any]:
        return self.family.sample(key, self.data)


def _locator(locate: Callable | None, source: str) -> Callable[[str], Location]:
    return locate if locate is not None else (lambda path: Location(file=source, path=path))


def make_family(task: Any, base_dir: Path | None = None, locate: Callable | None = None) -> Any:
    """The task family of a config's ``task`` section: a built-in one or ``"module:callable"``
    (looked up beside the config file, then on the import path), called with the section's keys;
    a located :class:`ConfigError` when it does not import, does not take those keys or does not
    follow :class:`mplp_graph.tasks.base.TaskFamily`."""
    loc = _locator(locate, "config")
    target = FAMILIES.get(task.family, task.family)
    module_name, _, attr = target.partition(":")
    path = [str(base_dir)] if base_dir is not None else []
    sys.path[:0] = path + [os.getcwd()]
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any failure to import is the user's to fix
        raise ConfigError(f"cannot import module {module_name!r} ({type(e).__name__}: {e}); a user family is 'module:callable' with the "
                          "module a .py file beside the config file or on the Python path", loc("task.family")) from None
    finally:
        del sys.path[: len(path) + 1]
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"module {module_name!r} has no callable {attr!r}; name a class or function that returns a task family", loc("task.family"))
    kwargs: dict[str, Any] = {}
    common = ("inner_steps", "batch", "cv_points")
    if task.family in FAMILIES:
        kwargs.update({k: getattr(task, k) for k in common})
        if task.family == "mnist":
            kwargs.update(image_size=task.image_size, validation=task.validation, dataset=task.dataset)
    else:
        kwargs.update({k: getattr(task, k) for k in common if k in task.model_fields_set})
    kwargs.update(task.args)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{target} cannot be called with {sorted(kwargs)}: {e}; remove or rename the key under task (or task.args)",
                          loc("task.args" if task.args else "task.family")) from None
    except ValueError:  # no signature to check (a builtin): call it
        pass
    try:
        family = factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{target}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: {e}", loc("task")) from None
    problems = check_family(family, target)
    if problems:
        raise ConfigError("; ".join(problems), loc("task.family"))
    return family


def forward_only(spec: GraphSpec) -> GraphSpec:
    """The graph's forward phase alone (the baselines' net and the evaluation's measuring net):
    the arrows of phase ``forward``, one phase per step."""
    arrows = tuple(a for a in spec.arrows if a.phase == "forward")
    sched = spec.schedule
    schedule = ScheduleSpec(
        phases={k: v for k, v in sched.phases.items() if k == "forward"}, step=("forward",),
        random={k: v for k, v in sched.random.items() if k == "forward"}, rng=sched.rng if "forward" in sched.random else None,
    )
    return spec.model_copy(update={"name": f"{spec.name}_forward", "arrows": arrows, "schedule": schedule})


def _graph_file(g: Any, base_dir: Path | None, loc: Callable) -> tuple[Program, Program]:
    from mplp_graph.config.load import load_graph

    path = Path(g.file)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(f"no such graph file {str(path)!r} (relative paths are relative to the config file's folder)", loc("graph.file"))
    spec = load_graph(path)  # located errors in the graph file itself
    prog = compile_graph(spec)
    if not any(plan.op.init is not None for plan in prog.plans):
        raise ConfigError(f"graph {spec.name!r} ({path}) has no learner arrows (arrows whose op has parameters, such as mplp_gru or mplp_mlp): "
                          f"there is nothing to meta-train; write its update rule as learner arrows ({LEARNER_HOW_TO})", loc("graph.file"))
    missing = [k for k in ("loss", "pred") if k not in spec.outputs]
    if missing:
        raise ConfigError(f"graph {spec.name!r} ({path}) has no output(s) {missing}: meta-training reads outputs 'loss' (elementwise loss) "
                          "and 'pred' (predictions); add them under outputs:", loc("graph.file"))
    return prog, compile_graph(forward_only(spec))


def _rollout_graph(g: Any, base_dir: Path | None, loc: Callable) -> Program:
    """The graph of a rollout experiment: a graph file with ops that have parameters."""
    from mplp_graph.config.load import load_graph

    path = Path(g.file)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(f"no such graph file {str(path)!r} (relative paths are relative to the config file's folder)", loc("graph.file"))
    prog = compile_graph(load_graph(path))
    if not any(plan.op.init is not None for plan in prog.plans):
        raise ConfigError(f"graph {prog.spec.name!r} ({path}) has no ops with parameters (such as residual_mlp or dense): there is nothing "
                          "to train; write its update rule with one (docs/nca.md)", loc("graph.file"))
    return prog


def template_spec(g: Any) -> GraphSpec:
    """The learned-protocol graph of a config's ``graph`` section without ``file`` (the MLP
    template, :func:`mplp_graph.templates.mplp.mplp_feedforward`)."""
    return mplp_feedforward(
        g.sizes, g.activation, g.loss, learner=g.learner, msg=g.msg, hidden=g.hidden, sharing=g.sharing,
        out_scale_init=g.out_scale_init, matmul=g.matmul, first_layer=g.first_layer, chunk_rows=g.chunk_rows,
    )


def _template(g: Any) -> tuple[Program, Program]:
    spec = template_spec(g)
    fwd = feedforward(g.sizes, "relu" if g.activation == "step" else g.activation, g.loss, protocol="none")
    return compile_graph(spec), compile_graph(fwd)


def check_task_fits_graph(prog: Program, family: Any, data: Any, loc: Callable[[str], Location]) -> None:
    """Located errors when the family's tasks cannot feed the graph: its batch keys (``x``,
    ``y``), the shapes of one example, and learner arrows reading a field that nothing fills."""
    spec = prog.spec
    if set(spec.inputs) != {"x", "y"}:
        raise ConfigError(f"graph {spec.name!r} takes batch keys {sorted(spec.inputs)}; the learning layer feeds 'x' (inputs) and 'y' "
                          "(targets): name the graph's inputs x and y", loc("graph"))
    shapes = jax.eval_shape(lambda k: family.sample(k, data), jax.random.PRNGKey(0))
    missing = [k for k in TASK_KEYS if k not in shapes]
    if missing:
        raise ConfigError(f"the task family's sample() returns no {missing} (it must give {list(TASK_KEYS)}; mplp_graph.tasks.base)", loc("task.family"))
    want_kb = (family.inner_steps, family.batch)
    for key, ref in spec.inputs.items():
        gname, fname = ref.split(".")
        group = spec.groups[gname]
        need = stored_shape(group, group.state[fname], 1)[1:]
        got = shapes[f"{key}t"].shape
        if tuple(got[:2]) != want_kb or tuple(got[2:]) != tuple(need):
            raise ConfigError(f"the task family's inner batches {key}t have shape {tuple(got)}, the graph's {ref} needs (inner_steps, batch, *{tuple(need)}) = "
                              f"{want_kb + tuple(need)}; change the family's arguments or the graph", loc("task"))
        got_e = shapes[f"{key}e"].shape
        if tuple(got_e[1:]) != tuple(need):
            raise ConfigError(f"the task family's held-out {key}e have shape {tuple(got_e)}, the graph's {ref} needs (points, *{tuple(need)})", loc("task"))
    fed = {tuple(ref.split(".")) for ref in spec.inputs.values()}
    written = {(a.dst, a.into) for a in spec.arrows if a.into} | {(a.src, f) for a in spec.arrows for f in a.updates}
    for plan in prog.plans:
        if plan.op.init is None:
            continue
        arrow = spec.arrow(plan.name)
        for f in arrow.inputs:
            field = spec.groups[arrow.src].state[f]
            if (arrow.src, f) not in fed | written and field.batched and field.init.kind == "zeros":
                raise ConfigError(f"learner arrow {arrow.name!r} reads {arrow.src}.{f}, which no arrow writes and no batch key feeds (the graph's "
                                  f"inputs: {dict(spec.inputs)}), so it is always zero; feed it from the task through inputs: or write it with an arrow",
                                  loc("graph.file"))


def build(config: ExperimentConfig, *, data: Any = None, base_dir: str | Path | None = None, locate: Callable | None = None) -> Setup:
    """Programs, task family and data for ``config``. ``base_dir``: the config file's folder
    (relative graph files, user families); ``data``: the family's arrays when already loaded;
    ``locate``: key path -> Location in the config file (errors)."""
    base = Path(base_dir) if base_dir is not None else None
    loc = _locator(locate, "config")
    if config.rollout is not None:  # the graph's own parameters, trained through rollouts (mplp_graph.meta.rollout)
        from mplp_graph.meta.rollout import rollout_data

        prog = _rollout_graph(config.graph, base, loc)
        return Setup(config, prog, prog, None, rollout_data(config, prog, base, loc) if data is None else data, base)
    family = make_family(config.task, base, loc)
    prog, fwd = _graph_file(config.graph, base, loc) if config.graph.file is not None else _template(config.graph)
    check_devices(config, loc, prog)
    if config.meta.freeze:
        try:  # the names must exist in the learners' parameters (shapes only: nothing is initialised)
            trainable_mask(jax.eval_shape(prog.init_params, jax.random.PRNGKey(0)), freeze=config.meta.freeze)
        except ValueError as e:
            raise ConfigError(f"{e}; fix meta.freeze", loc("meta.freeze")) from None
    if data is None:
        data = family.load()
    check_task_fits_graph(prog, family, data, loc)
    return Setup(config, prog, fwd, family, data, base)


def splits_tasks(config: ExperimentConfig) -> bool:
    """Whether the outer batch is split over devices: ``meta.shard_tasks``, and always in a job
    of several processes (docs/scaling.md)."""
    return config.meta.shard_tasks or jax.process_count() > 1


def device_layout(config: ExperimentConfig) -> tuple[int, int] | None:
    """``(tasks, agents)``: the mesh's shape (devices splitting the outer batch, devices splitting
    agent axes; mplp_graph.compile.partition.device_mesh), or None for no mesh."""
    m = config.meta
    n = jax.device_count()
    if not m.shard_agents:
        return (n, 1) if splits_tasks(config) else None
    agents = m.agent_devices or (1 if splits_tasks(config) else n)
    return (n // agents, agents)


def check_devices(config: ExperimentConfig, loc: Callable[[str], Location], prog: Program | None = None) -> None:
    """Located errors when the outer batch or the agent axes of ``meta.shard_agents`` cannot be
    split over the devices (of every process)."""
    m = config.meta
    if not (m.shard_agents or m.agent_devices or splits_tasks(config)):
        return
    n = jax.device_count()
    procs = f" ({jax.process_count()} processes x {jax.local_device_count()} devices)" if jax.process_count() > 1 else ""
    if m.shard_agents:
        if splits_tasks(config) and m.agent_devices is None:
            raise ConfigError(f"the outer batch is split over devices{procs} and meta.shard_agents splits agents too: set meta.agent_devices, "
                              f"how many of the {n} devices split the agents (the others split the outer batch)", loc("meta.agent_devices"))
        if m.agent_devices is not None and n % m.agent_devices:
            raise ConfigError(f"meta.agent_devices ({m.agent_devices}) must divide the number of devices ({n}){procs}", loc("meta.agent_devices"))
    elif m.agent_devices is not None:
        raise ConfigError("meta.agent_devices applies with meta.shard_agents only; remove it or name the groups to split", loc("meta.agent_devices"))
    layout = device_layout(config)
    if layout is None:
        return
    tasks, agents = layout
    if prog is not None and m.shard_agents:
        from mplp_graph.compile.partition import sharding_problems

        problems = sharding_problems(prog.spec, dict(m.shard_agents), agents)
        if problems:
            raise ConfigError([(loc(f"meta.shard_agents.{g}"), msg) for g, msg in problems])
    if not splits_tasks(config):
        return
    from mplp_graph.meta.shard import divisibility_problem

    if m.outer_batch_mode == "map":
        raise ConfigError(f"outer_batch_mode 'map' runs the tasks one after another, but this job of {jax.process_count()} processes splits them "
                          "over its devices: set meta.outer_batch_mode to 'auto' or 'vmap'", loc("meta.outer_batch_mode"))
    problem = divisibility_problem(m.outer_batch, tasks)
    if problem:
        raise ConfigError(f"{problem}{procs}", loc("meta.outer_batch"))


def load_setup(config_path: str | Path) -> Setup:
    """:func:`build` for a config file (errors located in it)."""
    config, locate = load_experiment(config_path)
    return build(config, base_dir=Path(config_path).parent, locate=locate)


def initial_params(setup: Setup) -> Any:
    """Learner parameters with standardizer statistics from the init rollout (:mod:`mplp_graph.meta.stats`)."""
    m = setup.config.meta
    key = jax.random.PRNGKey(m.seed)
    params = setup.prog.init_params(key)

    def draw(k, data):
        kp, kt = jax.random.split(k)
        task = setup.family.sample(kt, data)
        return agent_params(setup.prog.spec, setup.prog.init(kp, 1)), task["xt"], task["yt"]

    # one compiled program per draw (op by op, each small op compiled its own: ~2 s); the data
    # are an argument, not constants baked into it
    draw = jax.jit(draw)
    if m.stats_rounds:
        params = init_statistics(
            setup.prog, params, lambda k: draw(k, setup.data), jax.random.fold_in(key, 1), m.stats_rounds, m.stats_mix
        )
    return params


def optimizer(config: ExperimentConfig):
    m = config.meta
    return adam(m.lr, m.lr_schedule, m.steps, m.lr_final, m.lr_warmup)


def write_run_config(setup: Setup, run_dir: Path) -> None:
    """The run folder's ``config.yaml`` (and ``graph.yaml``, a copy of a graph file's graph, and
    a copy of a user family's module when it is a file beside the config, so the folder
    evaluates and resumes on its own)."""
    import shutil

    from mplp_graph.config.load import dump_graph

    data = setup.config.to_json()
    if setup.config.task.family not in FAMILIES and setup.base_dir is not None:
        module = sys.modules.get(setup.config.task.family.partition(":")[0])
        source = Path(getattr(module, "__file__", None) or "")
        if source.is_file() and source.parent.resolve() == setup.base_dir.resolve() and source.suffix == ".py":
            shutil.copyfile(source, run_dir / source.name)
    if setup.config.graph.file is not None:
        atomic_write_bytes(run_dir / "graph.yaml", dump_graph(setup.prog.spec).encode())
        data["graph"] = {"file": "graph.yaml"}
    atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False).encode())


def train(config: ExperimentConfig | Setup, run_dir: str | Path, *, resume: bool = True, progress: bool = True) -> tuple[Any, list]:
    """Meta-train ``config`` (or an already built :class:`Setup`) into ``run_dir``. The config is
    checked completely (graph, task family, shapes) before anything is written."""
    setup = config if isinstance(config, Setup) else build(config)
    config = setup.config
    run_dir = Path(run_dir)
    if jax.process_index() == 0:  # in a job of several processes, process 0 writes the run folder
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(setup, run_dir)
    m = config.meta
    if config.rollout is not None:  # the graph's own parameters through rollouts, a pool of states
        from mplp_graph.meta.rollout import rollout_step

        params = setup.prog.init_params(jax.random.PRNGKey(m.seed))
        step_fn = rollout_step(setup, optimizer(config))
        pool = step_fn.init_pool(setup.data["seed"], config.rollout.pool)
    else:
        params = initial_params(setup)
        step_fn = meta_step(setup)
        pool = make_pool(setup.prog, jax.random.PRNGKey(m.seed + 1), m.pool)  # meta_train replicates them over a mesh
    return meta_train(
        step_fn, params, trainable_mask(params, freeze=m.freeze), pool, jax.random.PRNGKey(m.seed + 2), m.steps, run_dir,
        checkpoint_every=m.checkpoint_every, resume=resume, progress=progress,
        meta={"experiment": config.experiment, "config": config.to_json()}, data=setup.data,
    )


def meta_step(setup: Setup) -> MetaStep:
    m = setup.config.meta
    mesh, prog = None, setup.prog
    layout = device_layout(setup.config)
    if layout is not None:  # tasks (the outer batch) and/or agents split over the devices of every process
        from mplp_graph.compile.partition import device_mesh

        mesh = device_mesh(*layout)
        prog = prog.shard_agents(mesh, dict(m.shard_agents))
    return MetaStep(
        prog, setup.family.sample, MetaLoss(m.hint_weight, m.cv_weight, m.remat, m.unroll, m.hint), m.outer_batch, optimizer(setup.config), mesh,
        FAST_COMPILE if m.fast_compile else (), m.outer_batch_mode, m.grad_normalize,
    )


def load_trained(run_dir: str | Path) -> tuple[Setup, Any, int]:
    """The setup of a run folder written by :func:`train` and the parameters of its newest
    checkpoint."""
    run_dir = Path(run_dir)
    setup = load_setup(run_dir / "config.yaml")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint; run training first")
    # the parameters alone: the optimizer state stored beside them is not needed to evaluate
    trees, manifest = load_checkpoint(ckpt, {"params": setup.prog.init_params(jax.random.PRNGKey(0))}, graph=setup.prog.spec)
    return setup, trees["params"], int(manifest["step"])


def load_params_file(setup: Setup, path: str | Path) -> Any:
    """Learner parameters saved by :func:`mplp_graph.meta.checkpoint.save_params_file`, checked
    against the graph (whose parameter shapes are traced, not computed)."""
    return load_params_like(jax.eval_shape(setup.prog.init_params, jax.random.PRNGKey(0)), path)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad", "nadam": "NAdam", "lion": "Lion"}


def baseline_optimizers(config: ExperimentConfig) -> dict[str, tuple[str, optax.GradientTransformation]]:
    """``{label: (key, optimizer)}`` of the config's baselines, e.g. ``{"Adam(0.01)": ("adam",
    optax.adam(0.01))}``. ``key`` prefixes the baseline's metric names: the optimizer's name, or
    with several rates of one optimizer, name and rate (``adam_lr0.1``)."""
    pairs = config.eval.baseline_rates()
    count = {n: sum(1 for m, _ in pairs if m == n) for n, _ in pairs}
    return {f"{OPTIMIZER_NAMES[n]}({lr:g})": (n if count[n] == 1 else f"{n}_lr{lr:g}", getattr(optax, n)(lr)) for n, lr in pairs}


def tune_baselines(setup: Setup, *, runs: int | None = None) -> dict[str, Any]:
    """Each baseline optimizer's rates (``eval.baselines``) compared on the validation split, the
    test set unseen: ``runs`` runs per rate (default ``eval.runs``) with seed ``eval.seed + 1``,
    so that for a synthetic family (new tasks at every draw) the runs that choose are not the
    runs that are reported. The criterion is the family's first metric after the last inner step,
    mean over runs (MNIST: accuracy, highest; the sinusoid: loss, lowest); a rate whose runs
    diverge (a non-finite mean) is never chosen. Returns ``{"split", "seed", "runs", "metric",
    "better", "grid": {optimizer: [{"lr", "<metric>_final", "<metric>_final_std"}, ...]},
    "chosen": {optimizer: rate}, "at_grid_edge": {optimizer: whether the chosen rate is its
    grid's smallest or largest, so that a wider grid may do better}}`` (non-finite figures as
    None)."""
    e = setup.config.eval
    runs = runs or e.runs
    metric = setup.family.metrics[0]
    lower = lower_is_better(metric)
    key = jax.random.PRNGKey(e.seed + 1)
    grid: dict[str, list[dict[str, Any]]] = {}
    for name, lr in e.baseline_rates():
        v = np.asarray(evaluate_optax(setup.fwd, getattr(optax, name)(lr), setup.family, key, runs, data=setup.data, split="validation")[metric])[:, -1]
        mean, std = float(v.mean()), float(v.std())
        grid.setdefault(name, []).append({"lr": lr, f"{metric}_final": mean if np.isfinite(mean) else None,
                                          f"{metric}_final_std": std if np.isfinite(std) else None})
    chosen = {name: best_rate(rows, f"{metric}_final", lower) for name, rows in grid.items()}
    edge = {name: len(rows) > 1 and chosen[name] in (min(r["lr"] for r in rows), max(r["lr"] for r in rows)) for name, rows in grid.items()}
    return {"split": "validation", "seed": e.seed + 1, "runs": runs, "metric": metric, "better": "lower" if lower else "higher",
            "grid": grid, "chosen": chosen, "at_grid_edge": edge}


def best_rate(rows: list[dict[str, Any]], field: str, lower: bool) -> float:
    """The ``lr`` of the row with the best ``field`` (lowest or highest; None, a diverged rate,
    is worst; ties go to the first row)."""
    worst = np.inf if lower else -np.inf
    score = [r[field] if r[field] is not None else worst for r in rows]
    return rows[int(np.argmin(score) if lower else np.argmax(score))]["lr"]


def tuned_optimizers(tuning: dict[str, Any]) -> dict[str, tuple[str, optax.GradientTransformation]]:
    """``{label: (key, optimizer)}`` of the rates :func:`tune_baselines` chose, e.g.
    ``{"Adam(0.003), tuned": ("adam_tuned", optax.adam(0.003))}``."""
    return {f"{OPTIMIZER_NAMES[n]}({lr:g}), tuned": (f"{n}_tuned", getattr(optax, n)(lr)) for n, lr in tuning["chosen"].items()}


def evaluate(setup: Setup, params: Any, *, runs: int | None = None, split: str | None = None) -> dict[str, Any]:
    """The learned protocol ``params`` and every baseline of the config through the evaluation
    harness, on the same tasks and random priors: ``{"methods": {label: {metric: (runs, K+1),
    ...}}, "keys": {label: metric-name prefix}, "eval_s": seconds}``; the learned protocol's
    label is ``"MPLP"`` (key ``mplp``). With ``eval.tune`` the baselines are the rates
    :func:`tune_baselines` chose on the validation split (keys ``adam_tuned``, ...), and
    ``"tuning"`` holds its record."""
    e = setup.config.eval
    key = jax.random.PRNGKey(e.seed)
    split = split or e.split
    if e.tune and split != "test":
        raise ConfigError(f"true chooses the baselines' rates on the validation split and reports them on the test split, but the evaluation "
                          f"was asked for split {split!r}: evaluate on the test split, or set eval.tune to false", Location(path="eval.tune"))
    kw = dict(data=setup.data, split=split)
    runs = runs or e.runs
    t0 = time.perf_counter()
    if setup.config.rollout is not None:  # growth and regrowth from the seed (mplp_graph.meta.rollout)
        from mplp_graph.meta.rollout import evaluate_rollout

        return evaluate_rollout(setup, params, runs)
    tuning = tune_baselines(setup, runs=runs) if e.tune else None
    methods = {"MPLP": evaluate_mplp(setup.prog, setup.fwd, params, setup.family, key, runs, **kw)}
    keys = {"MPLP": "mplp"}
    for label, (name, opt) in (tuned_optimizers(tuning) if tuning else baseline_optimizers(setup.config)).items():
        methods[label] = evaluate_optax(setup.fwd, opt, setup.family, key, runs, **kw)
        keys[label] = name
    out = {"methods": methods, "keys": keys, "eval_s": time.perf_counter() - t0}
    if tuning is not None:
        out["tuning"] = tuning
    return out


def summarize(results: dict[str, Any], metrics: tuple[str, ...]) -> tuple[dict[str, float], dict[str, list]]:
    """``(metrics, curves)``: for each method and metric, ``{method}_{metric}_final`` (mean over
    runs after the last inner step) and ``_final_std``; curves ``{method}_{metric}_mean/_std/_q25/_q75``
    (the quartiles over runs after each step)."""
    out: dict[str, float] = {}
    curves: dict[str, list] = {}
    for label, r in results["methods"].items():
        name = results["keys"][label]
        for metric in metrics:
            v = np.asarray(r[metric])
            out[f"{name}_{metric}_final"] = float(v[:, -1].mean())
            out[f"{name}_{metric}_final_std"] = float(v[:, -1].std())
            curves[f"{name}_{metric}_mean"] = v.mean(0).tolist()
            curves[f"{name}_{metric}_std"] = v.std(0).tolist()
            curves[f"{name}_{metric}_q25"] = np.percentile(v, 25, axis=0).tolist()
            curves[f"{name}_{metric}_q75"] = np.percentile(v, 75, axis=0).tolist()
    return out, curves


def plot_results(results: dict[str, Any], metrics: tuple[str, ...], path: Path, title: str = "") -> None:
    """One panel per metric (the mean over runs after each inner step, one line per method, the
    middle half of the runs shaded: a log scale cannot show mean - std); a first panel with run
    0's fit when inputs and targets are scalars (e.g. the sinusoid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = results["methods"]
    first = next(iter(methods.values()))
    example = first["example_x"].ndim == 2 and first["example_x"].shape[1] == 1 and first["pred"].shape[-1] == 1
    n = len(metrics) + int(example)
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 4), squeeze=False)
    axes = list(axes[0])
    if example:
        ax = axes.pop(0)
        order = np.argsort(first["example_x"][:, 0])
        ax.plot(first["example_x"][order, 0], first["example_y"][order, 0], "k--", label="target")
        for label, r in methods.items():
            ax.plot(first["example_x"][order, 0], r["pred"][0][order, 0], label=f"{label}, after the last step")
        ax.set_title("run 0: fit after the last inner step", fontsize=9)
        ax.legend(fontsize=7)
    for ax, metric in zip(axes, metrics):
        log = lower_is_better(metric)
        for label, r in methods.items():
            v = np.asarray(r[metric])
            steps = np.arange(v.shape[1])
            ax.plot(steps, v.mean(0), marker="o", label=label)
            ax.fill_between(steps, np.percentile(v, 25, axis=0), np.percentile(v, 75, axis=0), alpha=0.15)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("inner step")
        ax.set_title(f"{metric}: mean over {np.asarray(first[metric]).shape[0]} runs, middle half shaded", fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def results_header(setup: Setup, command: str) -> dict[str, Any]:
    """The fields every results file starts with: experiment, graph, command, commit, date, machine."""
    return {
        "experiment": setup.config.experiment,
        "graph": setup.prog.spec.name,
        "command": command,
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {jax.devices()[0].platform}, {jax.local_device_count()} device(s), jax {jax.__version__}",
    }


def write_results(setup: Setup, results: dict[str, Any], out_dir: Path, *, command: str, meta_steps: int | None, train_s: float | None) -> dict:
    """``results.json`` and ``eval.png`` in ``out_dir``: the final metrics, curves, command,
    commit, machine and config (a rollout experiment: :func:`mplp_graph.meta.rollout.write_rollout_results`)."""
    if setup.config.rollout is not None:
        from mplp_graph.meta.rollout import write_rollout_results

        return write_rollout_results(setup, results, out_dir, command=command, meta_steps=meta_steps, train_s=train_s)
    metrics = tuple(setup.family.metrics)
    numbers, curves = summarize(results, metrics)
    runs = int(np.asarray(next(iter(results["methods"].values()))[metrics[0]]).shape[0])
    doc = {
        **results_header(setup, command),
        "runs": runs,
        "split": setup.config.eval.split,
        "wall_s": {"meta_train": train_s, "eval": results["eval_s"]},
        "metrics": {**numbers, "meta_steps": meta_steps},
        "curves": curves,
        "config": setup.config.to_json(),
    }
    if "tuning" in results:  # the validation grid and the chosen rates (tune_baselines)
        doc["tuning"] = results["tuning"]
    atomic_write_json(out_dir / "results.json", doc)
    plot_results(results, metrics, out_dir / "eval.png", f"{setup.prog.spec.name}: {setup.config.experiment}")
    return doc
