"""Experiment configuration (YAML -> pydantic, ``extra="forbid"``): which graph, which task
family, how to meta-train and evaluate. Everything a run needs is here, so a run directory's
``config.yaml`` reproduces it."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mplp_graph.scalars import Flag, Int, PosInt, PosReal, Real


class _Strict(BaseModel):
    # unknown keys refused; numbers strict (no bool, string or non-finite value; mplp_graph/scalars.py)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class GraphConfig(_Strict):
    """Either ``file``, a graph YAML file with learner arrows (any graph; a relative path is
    relative to the config file's folder), or the arguments of
    :func:`mplp_graph.templates.mplp.mplp_feedforward` (a dense net)."""

    file: str | None = None
    sizes: tuple[PosInt, ...] = (1, 20, 20, 1)
    activation: str = "relu"
    loss: Literal["l2", "ce"] = "l2"
    learner: Literal["gru", "mlp"] = "gru"
    msg: Int = Field(8, ge=1)
    hidden: Int = Field(15, ge=0)
    sharing: Literal["none", "layers", "layers+norm"] = "none"
    out_scale_init: Real = 0.01
    matmul: Literal["float32", "bfloat16"] = "float32"  # learner matmul operands (float32 accumulation)
    # how a learner's first layer meets its input channels (mplp_graph.learners.nets)
    first_layer: Literal["split", "rows"] = "split"
    # learners over pieces of about this many agent-examples (0: whole tensors; docs/mplp.md)
    chunk_rows: Int = Field(0, ge=0)

    @model_validator(mode="after")
    def _file_or_template(self):
        template = sorted(self.model_fields_set - {"file"})
        if self.file is not None and template:
            raise ValueError(f"give either 'file' (a graph with learner arrows) or template arguments, not both; remove {', '.join(template)} "
                             "(a graph file's learners are written in the file)")
        return self


# the built-in task families (mplp_graph.meta.run.FAMILIES); any other family is "module:callable"
BUILTIN_FAMILIES = ("sinusoid", "mnist", "sequence", "linear")


class TaskConfig(_Strict):
    """The task family: a built-in one (:data:`BUILTIN_FAMILIES`) or a user's, ``"module:callable"``
    (``callable(**keywords)`` returns a :class:`mplp_graph.tasks.base.TaskFamily`; the module is
    looked up beside the config file, then on the usual import path). ``inner_steps``, ``batch``
    and ``cv_points`` (when set in the file, for a user family), the MNIST keys (``image_size``,
    ``validation``, ``dataset``) and ``args`` are the family's keyword arguments."""

    family: str = Field("sinusoid", pattern=r"^(sinusoid|mnist|sequence|linear|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")
    inner_steps: Int = Field(5, ge=1)
    batch: Int = Field(10, ge=1)
    cv_points: Int = Field(50, ge=1)
    # MNIST only: image side after the resize (12 as the paper, 28 = original) and the number of
    # training images held out as the validation split (CV loss, model selection)
    image_size: Int = Field(12, ge=1, le=28)
    validation: Int = Field(5000, ge=1)
    # MNIST only: the images, MNIST or Fashion-MNIST (same format and preprocessing, its own statistics)
    dataset: Literal["mnist", "fashion"] = "mnist"
    args: dict[str, Any] = {}  # more keyword arguments of the family (e.g. a sequence's window length)

    @model_validator(mode="after")
    def _dataset_is_mnist_family(self):
        if self.dataset != "mnist" and self.family != "mnist":
            raise ValueError(f"dataset {self.dataset!r} applies to family 'mnist' only (the image tasks); found family {self.family!r}: "
                             "remove dataset or set family: mnist")
        return self


# what the backward pass keeps of each inner step (mplp_graph.meta.objectives.remat_policy)
RematName = Literal["full", "hidden", "dots", "none"]


class MetaConfig(_Strict):
    steps: Int = Field(20000, ge=1)
    outer_batch: Int = Field(4, ge=1)
    pool: Int = Field(128, ge=1)
    lr: Real = Field(1e-4, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: from lr down to lr_final over `steps`
    lr_final: Real = Field(1e-5, gt=0)
    lr_warmup: Int = Field(0, ge=0)  # steps of linear warm-up of the learning rate (from lr / lr_warmup)
    # the meta-gradient before Adam: each leaf scaled to unit norm (the paper's), the whole
    # gradient, or left as it is (mplp_graph.meta.step.outer_update; docs/mplp.md)
    grad_normalize: Literal["per_leaf", "global", "none"] = "per_leaf"
    # learner parameters kept at their initial values, by name (e.g. [out_scale]; trainable_mask)
    freeze: tuple[str, ...] = ()
    hint_weight: Real = 0.7
    # the hint loss after each inner step on the batch just used (the paper's) or on the next one
    # (mplp_graph.meta.objectives.MetaLoss.hint; experiments/robust/README.md)
    hint: Literal["current", "next"] = "current"
    cv_weight: Real = 0.3
    stats_rounds: Int = Field(1, ge=0)
    stats_mix: Real = Field(1.0, ge=0, le=1)
    seed: Int = 0
    checkpoint_every: Int = Field(500, ge=1)
    shard_tasks: Flag = False  # split the outer batch over all devices (mplp_graph.meta.shard)
    # split agent axes of the graph's groups over devices, {group: agent axis}, e.g. {W0: 1, b0: 0,
    # a0: 0, W1: 0} for a dense net's first hidden layer (mplp_graph.compile.partition; docs/scaling.md)
    shard_agents: dict[str, Int] = {}
    # devices along the mesh's agents axis; default: all (required with shard_tasks or several
    # processes, where the rest of the devices split the outer batch)
    agent_devices: PosInt | None = None
    # recompute each inner step in the backward pass (MetaLoss.remat): true (= "full"), false
    # (= "none"), or a partial policy, "hidden" / "dots" (mplp_graph.meta.objectives.REMAT)
    remat: Flag | RematName = True
    # inner steps per iteration of the scan loop (MetaLoss.unroll): 1 = a loop, true = no loop
    unroll: Flag | PosInt = 1
    fast_compile: Flag = False  # compile the meta-step with XLA optimization level 1 (train.FAST_COMPILE)
    # the outer batch's tasks: vmapped, one after another (map), or auto = map on the CPU, vmap
    # elsewhere (mplp_graph.meta.batching); with shard_tasks they are vmapped
    outer_batch_mode: Literal["auto", "vmap", "map"] = "auto"

    @model_validator(mode="after")
    def _map_is_not_sharded(self):
        if self.shard_tasks and self.outer_batch_mode == "map":
            raise ValueError("outer_batch_mode 'map' runs the tasks one after another, shard_tasks splits them over devices: "
                             "set outer_batch_mode to 'auto' or 'vmap', or shard_tasks to false")
        return self


# optax optimizers a config may name as baselines (each called with its learning rate)
BASELINES = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "nadam", "lion")


class EvalConfig(_Strict):
    """The evaluation protocol: ``runs`` runs (fresh random prior and task each) of the learned
    protocol and of each baseline, an optax optimizer on the same forward net: ``baselines``
    maps an optimizer's name to its learning rate, or to a list of rates (default ``{adam:
    adam_lr}``). ``tune``: each optimizer's rates are compared on the validation split and only
    the best one is evaluated on the test split (:func:`mplp_graph.meta.run.tune_baselines`)."""

    runs: Int = Field(100, ge=1)
    adam_lr: Real = Field(0.01, gt=0)
    baselines: dict[Literal[BASELINES], PosReal | list[PosReal]] | None = None
    seed: Int = 12345
    split: Literal["test", "validation"] = "test"  # validation: model selection, the test set unseen
    tune: Flag = False  # choose each baseline's rate on the validation split, report the chosen one on the test split

    @model_validator(mode="after")
    def _tune_needs_a_grid_and_the_test_split(self):
        if self.tune and self.baselines is None:
            raise ValueError("tune: true chooses among each optimizer's rates: give them under baselines, e.g. "
                             "baselines: {adam: [0.001, 0.01, 0.1], sgd: [0.1, 1.0]}")
        if self.tune and self.split != "test":
            raise ValueError(f"tune: true chooses the rates on the validation split and reports them on the test split; found split: {self.split!r}: "
                             "set split: test, or tune: false to compare the rates on the validation split")
        return self

    def baseline_rates(self) -> list[tuple[str, float]]:
        """``(optimizer name, learning rate)`` pairs, in the config's order."""
        if self.baselines is None:
            return [("adam", self.adam_lr)]
        return [(name, lr) for name, rates in self.baselines.items() for lr in (rates if isinstance(rates, list) else [rates])]


class RolloutConfig(_Strict):
    """Train the graph's own parameters (its ops with parameters, e.g. ``residual_mlp``) by
    backpropagation through a rollout against a target image, with a sample pool and damage
    (learned cellular automata; :mod:`mplp_graph.meta.rollout`, docs/nca.md). The batch, the
    learning rate and the number of training steps are ``meta``'s ``outer_batch``, ``lr`` and
    ``steps``; ``eval.runs`` is the number of growths the evaluation averages."""

    target: str = Field("cell.s", pattern=r"^[A-Za-z_][\w]*\.[A-Za-z_][\w]*$")  # group.field compared with the image
    # a built-in image (mplp_graph.tasks.images.TARGETS) or a PNG file (relative: to the config's folder)
    image: str = "smiley"
    size: Int = Field(40, ge=4)  # the image's side in cells
    padding: Int = Field(16, ge=0)  # empty cells around it: the grid's side is size + 2 * padding
    steps: tuple[PosInt, PosInt] = (64, 96)  # the rollout's length is drawn from [min, max] at every training step
    pool: Int = Field(1024, ge=2)  # states in the sample pool
    damage: Int = Field(0, ge=0)  # samples of each batch that lose a random disc (regeneration training)
    remat: Flag = False  # recompute each rollout step in the backward pass (less memory, ~1.3x the time)

    @model_validator(mode="after")
    def _ordered(self):
        if self.steps[0] > self.steps[1]:
            raise ValueError(f"steps is a range [min, max]; got min {self.steps[0]} > max {self.steps[1]}")
        return self


class ExperimentConfig(_Strict):
    experiment: str = "sinusoid"
    graph: GraphConfig = GraphConfig()
    task: TaskConfig = TaskConfig()
    meta: MetaConfig = MetaConfig()
    eval: EvalConfig = EvalConfig()
    rollout: RolloutConfig | None = None  # given: train by backpropagation through rollouts (no task family)

    @model_validator(mode="after")
    def _next_hint_needs_two_steps(self):
        if self.rollout is None and self.meta.hint == "next" and self.task.inner_steps < 2:
            raise ValueError("meta.hint 'next' measures each inner step's net on the next step's batch: it needs task.inner_steps >= 2 "
                             f"(found {self.task.inner_steps}); set meta.hint to 'current' or raise task.inner_steps")
        return self

    @model_validator(mode="after")
    def _rollout_has_no_task(self):
        if self.rollout is None:
            return self
        if "task" in self.model_fields_set:
            raise ValueError("a rollout experiment (rollout:) trains against a target image, not on a task family: remove the task section")
        if self.graph.file is None:
            raise ValueError("a rollout experiment needs graph.file, a graph whose ops with parameters make its update rule (e.g. graphs/growing_nca.yaml)")
        if self.rollout.damage >= self.meta.outer_batch:
            raise ValueError(f"rollout.damage ({self.rollout.damage}) must be below meta.outer_batch ({self.meta.outer_batch}): "
                             "one sample of every batch restarts from the seed")
        return self

    def to_json(self) -> dict[str, Any]:
        """The config as JSON data that validates again to the same config (a run folder's
        ``config.yaml``, results files): a graph file's config leaves out the template arguments
        it does not use, a user family's the task keys its config did not set."""
        data = self.model_dump(mode="json")
        if self.graph.file is not None:
            data["graph"] = {"file": self.graph.file}
        if self.rollout is not None:
            data.pop("task")  # a rollout experiment has no task family
        elif self.task.family not in BUILTIN_FAMILIES:  # a user family gets the keys its config gave, no defaults
            data["task"] = {k: v for k, v in data["task"].items() if k in ("family", "args") or k in self.task.model_fields_set}
        return data


def load_experiment_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and validate the experiment config file ``path`` (YAML). Raises
    :class:`mplp_graph.errors.ConfigError` whose issues say ``file:line:col key.path: what was
    expected, what was found, how to fix it``, as for graph files (duplicate keys included)."""
    return load_experiment(path)[0]


def load_experiment(path: str | os.PathLike) -> tuple[ExperimentConfig, Any]:
    """:func:`load_experiment_config` and ``locate(key_path) -> Location`` in the file (for the
    checks that need more than the schema: the graph file, the task family)."""
    from mplp_graph.config.load import validate_located
    from mplp_graph.config.yaml_nodes import MAX_BYTES, decode_text
    from mplp_graph.errors import ConfigError, Location

    filename = os.fspath(path)
    if not os.path.isfile(filename):
        raise ConfigError("no such file; give the path of an experiment config (e.g. experiments/sinusoid/config.yaml)", Location(file=filename))
    with open(filename, "rb") as f:
        raw = f.read(MAX_BYTES + 1)
    top = "the top level of an experiment config must be a mapping with keys such as " + ", ".join(ExperimentConfig.model_fields) + "; found {found}"
    return validate_located(decode_text(raw, filename), filename, ExperimentConfig, ConfigError, top)


def apply_overrides(config: ExperimentConfig, overrides: dict[str, Any], source: str = "override") -> ExperimentConfig:
    """``config`` with ``{"SECTION.KEY": value}`` set (e.g. ``{"meta.steps": 100}``), validated
    again. Raises :class:`mplp_graph.errors.ConfigError` naming ``source`` (e.g. ``--set``) and
    the key, with what was expected, what was found and how to fix it."""
    from pydantic import ValidationError

    from mplp_graph.config.issues import validation_issues
    from mplp_graph.errors import ConfigError, Location

    raw = config.to_json()
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if not name or not isinstance(raw.get(section), dict):
            sections = ", ".join(k for k, v in raw.items() if isinstance(v, dict))
            raise ConfigError(f"expected SECTION.KEY with SECTION one of {sections}, got {key!r}", Location(file=source, path=key))
        raw[section][name] = value
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(validation_issues(e, raw, lambda path: Location(file=source, path=path), ExperimentConfig)) from None
