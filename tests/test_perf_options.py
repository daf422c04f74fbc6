"""Performance options that must not change the numbers: learners run in cache-sized pieces
(``chunk_rows``; forward pass and meta-gradient, stateful and stateless learner), the inner-step
remat switch and the fast-compile XLA options, and their config keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph.errors import MplpGraphError
from mplp_graph.learners.nets import chunk_plan, chunked, gru_apply, gru_init
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.step import MetaStep, adam, make_pool, trainable_mask
from mplp_graph.meta.train import FAST_COMPILE, _jit_step
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward


def test_chunk_plan_cuts_the_largest_axis_near_the_wanted_rows():
    assert chunk_plan((8, 144, 50), 2048) == (1, 24)  # 57,600 rows: 24 pieces of 2,400
    assert chunk_plan((8, 144, 50), 1024) == (1, 48)
    assert chunk_plan((8, 50, 10), 2048) is None  # 4,000 rows: under 4 x 2,048, whole
    assert chunk_plan((8, 144, 50), 0) is None  # 0: never
    assert chunk_plan((3, 97, 5), 16) == (1, 97)  # a prime axis is cut into single slices
    assert chunk_plan((2, 3), 1) == (1, 3)


def test_chunked_gru_equals_whole_values_and_gradients():
    key = jax.random.PRNGKey(0)
    p = gru_init(key, 6, 12)
    m = jax.random.normal(jax.random.fold_in(key, 1), (4, 1, 9, 4))  # broadcast along the cut axis
    w = jax.random.normal(jax.random.fold_in(key, 2), (1, 12, 9, 1))
    x = jax.random.normal(jax.random.fold_in(key, 3), (4, 12, 1, 1))
    c = 0.5 * jnp.tanh(jax.random.normal(jax.random.fold_in(key, 4), (4, 12, 9, 12)))
    ct = jax.random.normal(jax.random.fold_in(key, 5), c.shape)
    assert chunk_plan((4, 12, 9), 16) == (1, 12)

    def loss(p, m, w, x, c, rows):
        return jnp.sum(chunked(lambda ts: gru_apply(p, ts[:3], ts[3]), [m, w, x, c], rows) * ct)

    assert "scan[" in str(jax.make_jaxpr(loss, static_argnums=5)(p, m, w, x, c, 16))
    whole = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))(p, m, w, x, c, 0)
    piece = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))(p, m, w, x, c, 16)
    np.testing.assert_allclose(piece[0], whole[0], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(piece[1]), jax.tree_util.tree_leaves(whole[1])):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def _meta(learner, rows):
    spec = mplp_feedforward((4, 12, 3), "sigmoid", "l2", learner=learner, msg=3, hidden=2, chunk_rows=rows)
    prog = mg.compile_graph(spec)
    family = SinusoidFamily(inner_steps=2, batch=6, cv_points=8)
    params = prog.init_params(jax.random.PRNGKey(0))
    pool = make_pool(prog, jax.random.PRNGKey(1), 2)
    step = MetaStep(prog, family.sample, MetaLoss(), 2, adam(1e-3))
    tasks = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(2), 2))
    tasks = {**tasks, "xt": jnp.repeat(tasks["xt"], 4, -1), "xe": jnp.repeat(tasks["xe"], 4, -1),
             "yt": jnp.repeat(tasks["yt"], 3, -1), "ye": jnp.repeat(tasks["ye"], 3, -1)}
    loss = lambda p: step.batch_loss(p, {"priors": pool, "tasks": tasks})[0]  # noqa: E731
    n_scans = str(jax.make_jaxpr(loss)(params)).count("scan[")
    return spec, n_scans, jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("learner", ["gru", "mlp"])
def test_chunked_learners_give_the_same_meta_loss_and_gradient(learner):
    spec, scans, (l_whole, g_whole) = _meta(learner, 0)
    spec_c, scans_c, (l_piece, g_piece) = _meta(learner, 8)  # W1: 6 x 4 x 12 = 288 rows, cut in 12 pieces
    assert any(a.op.args.get("chunk_rows") == 8 for a in spec_c.arrows)
    assert scans_c > scans  # the pieces run in a loop (lax.map)
    assert np.isfinite(float(l_whole))
    np.testing.assert_allclose(l_piece, l_whole, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g_piece), jax.tree_util.tree_leaves(g_whole)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * (float(jnp.max(jnp.abs(b))) + 1e-12))


def test_bad_chunk_rows_is_a_located_error():
    with pytest.raises(MplpGraphError, match="chunk_rows"):
        mg.compile_graph(mplp_feedforward((1, 4, 1), msg=3, hidden=2, chunk_rows=-3))


def test_config_keys_reach_the_graph_and_the_meta_step():
    from mplp_graph.meta.config import ExperimentConfig
    from mplp_graph.meta.run import build, meta_step

    config = ExperimentConfig.model_validate(
        {"graph": {"sizes": [1, 8, 1], "msg": 3, "hidden": 2, "chunk_rows": 64}, "meta": {"remat": False, "fast_compile": True}}
    )
    setup = build(config)
    rows = {a.op.args.get("chunk_rows") for a in setup.prog.spec.arrows if a.op.name.startswith("mplp_")}
    assert rows == {64}
    step = meta_step(setup)
    assert step.objective.remat is False and step.compiler_options == FAST_COMPILE
    assert meta_step(build(ExperimentConfig())).compiler_options == ()
    with pytest.raises(ValueError, match="chunk_rows"):
        ExperimentConfig.model_validate({"graph": {"chunk_rows": -1}})


def test_fast_compile_and_no_remat_give_the_same_meta_step():
    prog = mg.compile_graph(mplp_feedforward((1, 6, 1), msg=3, hidden=2))
    family = SinusoidFamily(inner_steps=2, batch=4, cv_points=8)
    params = prog.init_params(jax.random.PRNGKey(0))
    pool = make_pool(prog, jax.random.PRNGKey(1), 4)
    out = {}
    for name, objective, options in (("default", MetaLoss(), ()), ("fast", MetaLoss(), FAST_COMPILE), ("no_remat", MetaLoss(remat=False), ())):
        step = MetaStep(prog, family.sample, objective, 2, adam(1e-3), compiler_options=options)
        fn = _jit_step(step)
        new, _, aux = fn(params, step.init_opt_state(params), trainable_mask(params), pool, jax.random.PRNGKey(2))
        out[name] = (float(aux["loss"]), new)
    for name in ("fast", "no_remat"):
        np.testing.assert_allclose(out[name][0], out["default"][0], rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(out[name][1]), jax.tree_util.tree_leaves(out["default"][1]), strict=True):
            np.testing.assert_allclose(a, b, atol=2e-3)  # Adam's first step: ~lr per entry


# ---------------------------------------------------------------------------------------------
# first layer by channels (split) or on concatenated rows; the single-task meta-step; XLA options


def test_first_layer_rows_equals_split_values_and_gradients():
    from mplp_graph.learners.nets import mlp_apply, mlp_init

    key = jax.random.PRNGKey(3)
    p = gru_init(key, 6, 12)
    q = mlp_init(jax.random.fold_in(key, 9), (6, 80, 40, 3))
    m = jax.random.normal(jax.random.fold_in(key, 1), (4, 1, 9, 4))
    w = jax.random.normal(jax.random.fold_in(key, 2), (1, 7, 9, 1))
    x = jax.random.normal(jax.random.fold_in(key, 3), (4, 7, 1, 1))
    c = 0.5 * jnp.tanh(jax.random.normal(jax.random.fold_in(key, 4), (4, 7, 9, 12)))
    ct = jax.random.normal(jax.random.fold_in(key, 5), c.shape)

    def loss(p, q, m, w, x, c, first):
        out = gru_apply(p, [m, w, x], c, first_layer=first)
        g = mlp_apply(q, [m, w, x], jax.nn.relu, jnp.tanh, first_layer=first)
        assert out.shape == (4, 7, 9, 12) and g.shape == (4, 7, 9, 3)
        return jnp.sum(out * ct) + jnp.sum(g * ct[..., :3])

    vg = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5))
    split, rows = vg(p, q, m, w, x, c, "split"), vg(p, q, m, w, x, c, "rows")
    np.testing.assert_allclose(rows[0], split[0], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(rows[1]), jax.tree_util.tree_leaves(split[1]), strict=True):
        assert a.shape == b.shape  # the gradients of broadcast channels keep their own shapes
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    with pytest.raises(ValueError, match="first_layer"):
        gru_apply(p, [m, w, x], c, first_layer="concat")


def test_first_layer_config_key_and_op_argument():
    from mplp_graph.meta.config import ExperimentConfig
    from mplp_graph.meta.run import build

    setup = build(ExperimentConfig.model_validate({"graph": {"sizes": [1, 8, 1], "msg": 3, "hidden": 2, "first_layer": "rows"}}))
    assert {a.op.args.get("first_layer") for a in setup.prog.spec.arrows if a.op.name.startswith("mplp_")} == {"rows"}
    default = build(ExperimentConfig.model_validate({"graph": {"sizes": [1, 8, 1], "msg": 3, "hidden": 2}}))
    # the default is left out of the op arguments, so graphs written before the option keep their hash
    assert all("first_layer" not in a.op.args for a in default.prog.spec.arrows)
    with pytest.raises(ValueError, match="first_layer"):
        ExperimentConfig.model_validate({"graph": {"first_layer": "cols"}})
    with pytest.raises(MplpGraphError, match="first_layer"):
        mg.compile_graph(mplp_feedforward((1, 4, 1), msg=3, hidden=2, first_layer="cols"))


def test_single_task_meta_step_equals_the_vmapped_one():
    """An outer batch of one runs without vmap (MetaStep.batch_loss); same loss and gradient."""
    from mplp_graph.meta.objectives import task_loss

    prog = mg.compile_graph(mplp_feedforward((1, 6, 1), msg=3, hidden=2))
    family = SinusoidFamily(inner_steps=2, batch=4, cv_points=8)
    params = prog.init_params(jax.random.PRNGKey(0))
    prior = make_pool(prog, jax.random.PRNGKey(1), 1)
    task = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(2), 1))
    step = MetaStep(prog, family.sample, MetaLoss(), 1, adam(1e-3))

    def vmapped(p):
        losses, _ = jax.vmap(lambda pr, t: task_loss(prog, MetaLoss(), p, pr, t))(prior, task)
        return jnp.mean(losses)

    l1, g1 = jax.value_and_grad(lambda p: step.batch_loss(p, {"priors": prior, "tasks": task})[0])(params)
    l2, g2 = jax.value_and_grad(vmapped)(params)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * (float(jnp.max(jnp.abs(b))) + 1e-12))


@pytest.mark.parametrize("joint", [False, True], ids=["MetaStep", "JointStep"])
def test_outer_batch_modes_give_the_same_loss_and_gradient(joint):
    """The outer batch's tasks vmapped or one after another (lax.map): the same meta-loss and
    meta-gradient; "auto" is "map" on the CPU."""
    from mplp_graph.meta.maml import JointStep, joint_params
    from mplp_graph.meta.batching import resolve

    prog = mg.compile_graph(mplp_feedforward((1, 6, 1), msg=3, hidden=2, learner="mlp" if joint else "gru"))
    family = SinusoidFamily(inner_steps=2, batch=4, cv_points=8)
    tasks = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(2), 3))
    if joint:
        params = joint_params(prog, family, jax.random.PRNGKey(0))
        steps = {m: JointStep(prog, family.sample, 3, adam(1e-3), outer_batch_mode=m) for m in ("vmap", "map")}
        run = {m: (lambda p, s=s: s.batch_loss(p, {"priors": None, "tasks": tasks})) for m, s in steps.items()}
    else:
        params = prog.init_params(jax.random.PRNGKey(0))
        priors = make_pool(prog, jax.random.PRNGKey(1), 3)
        steps = {m: MetaStep(prog, family.sample, MetaLoss(), 3, adam(1e-3), outer_batch_mode=m) for m in ("vmap", "map")}
        run = {m: (lambda p, s=s: s.batch_loss(p, {"priors": priors, "tasks": tasks})) for m, s in steps.items()}
    (l1, parts1), g1 = jax.value_and_grad(run["vmap"], has_aux=True)(params)
    (l2, parts2), g2 = jax.value_and_grad(run["map"], has_aux=True)(params)
    assert float(l1) > 0 and sorted(parts1) == sorted(parts2)
    np.testing.assert_allclose(l2, l1, rtol=1e-6)
    for k in parts1:
        np.testing.assert_allclose(parts2[k], parts1[k], rtol=1e-5)
    moved = 0
    for a, b in zip(jax.tree_util.tree_leaves(g2), jax.tree_util.tree_leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * (float(jnp.max(jnp.abs(b))) + 1e-12))
        moved += int(jnp.any(b != 0))
    assert moved > 10  # gradients reach the learners
    hlo = {m: jax.jit(lambda p, f=f: f(p)[0]).lower(params).as_text() for m, f in run.items()}  # the forward's loops
    assert "while" in hlo["map"] and hlo["map"].count("while") > hlo["vmap"].count("while")  # the task loop
    assert resolve("auto") == ("map" if jax.default_backend() == "cpu" else "vmap")
    assert resolve("vmap") == "vmap"
    with pytest.raises(ValueError, match="the batch mode must be one of auto, vmap, map; found 'loop'"):
        MetaStep(prog, family.sample, MetaLoss(), 3, adam(1e-3), outer_batch_mode="loop")


def test_evaluation_runs_vmapped_or_in_a_loop_give_the_same_results():
    """The MPLP evaluations (sinusoid protocol and MNIST-shaped protocol on random data) with the
    runs vmapped or one after another: the same numbers."""
    from mplp_graph.meta.evaluate import evaluate_mplp
    from mplp_graph.tasks.mnist import MnistFamily

    family = SinusoidFamily(inner_steps=2, batch=4, cv_points=8)
    prog = mg.compile_graph(mplp_feedforward((1, 6, 1), msg=3, hidden=2))
    fwd = mg.compile_graph(mg.feedforward((1, 6, 1), "relu", "l2", lr=0.1))
    params = prog.init_params(jax.random.PRNGKey(0))
    r = {m: evaluate_mplp(prog, fwd, params, family, jax.random.PRNGKey(3), runs=3, mode=m) for m in ("vmap", "map")}
    assert r["vmap"]["loss"].shape == (3, 3)
    for k in ("loss", "seen_loss", "pred"):
        np.testing.assert_allclose(r["map"][k], r["vmap"][k], rtol=1e-5, atol=1e-7)

    rng = np.random.default_rng(0)
    onehot = lambda n: np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    train_x, train_y = rng.normal(size=(64, 5)).astype(np.float32), onehot(64)
    # the test split's inner batches come from the training and validation splits, in that order
    data = {"train_x": train_x[:48], "train_y": train_y[:48], "val_x": train_x[48:], "val_y": train_y[48:],
            "test_x": rng.normal(size=(150, 5)).astype(np.float32), "test_y": onehot(150)}
    mnist_like = MnistFamily(inner_steps=2, batch=4)
    prog = mg.compile_graph(mplp_feedforward((5, 4, 3), "sigmoid", "ce", msg=2, hidden=2))
    fwd = mg.compile_graph(mg.feedforward((5, 4, 3), "sigmoid", "ce", lr=0.1))
    params = prog.init_params(jax.random.PRNGKey(1))
    res = {m: evaluate_mplp(prog, fwd, params, mnist_like, jax.random.PRNGKey(4), runs=3, data=data, mode=m) for m in ("vmap", "map")}
    acc = {m: r["accuracy"][:, 1:] for m, r in res.items()}  # after each update (column 0: before any)
    assert acc["vmap"].shape == (3, 2) and np.all((acc["vmap"] >= 0) & (acc["vmap"] <= 100))
    np.testing.assert_allclose(acc["map"], acc["vmap"], atol=1e-4)


def test_outer_batch_mode_map_is_refused_with_a_mesh():
    from mplp_graph.meta.config import ExperimentConfig
    from mplp_graph.meta.shard import task_mesh

    prog = mg.compile_graph(mplp_feedforward((1, 4, 1), msg=2, hidden=2))
    with pytest.raises(ValueError, match="use 'vmap' or 'auto' with a mesh"):
        MetaStep(prog, SinusoidFamily().sample, MetaLoss(), 2, adam(1e-3), mesh=task_mesh(), outer_batch_mode="map")
    MetaStep(prog, SinusoidFamily().sample, MetaLoss(), 2, adam(1e-3), mesh=task_mesh())  # auto: vmapped over the mesh
    with pytest.raises(ValueError, match="set outer_batch_mode to 'auto' or 'vmap', or shard_tasks to false"):
        ExperimentConfig.model_validate({"meta": {"shard_tasks": True, "outer_batch_mode": "map"}})
    assert ExperimentConfig.model_validate({"meta": {"outer_batch_mode": "vmap"}}).meta.outer_batch_mode == "vmap"


def test_library_xla_options_on_the_cpu(monkeypatch):
    from mplp_graph import xla

    if jax.default_backend() != "cpu":
        pytest.skip("the options apply to the CPU backend only")
    if not xla._supported("cpu"):
        assert xla.default_options() == {}  # an XLA without the option is left alone
        pytest.skip("this XLA has no xla_cpu_experimental_ynn_fusion_type")
    assert xla.default_options() == xla.CPU_OPTIONS
    assert xla.compiler_options({"xla_backend_optimization_level": 1}) == {**xla.CPU_OPTIONS, "xla_backend_optimization_level": 1}

    def f(x):  # a reduction over a middle axis, one of the ops the option takes from YNNPACK
        return jnp.sum(jnp.tanh(x), axis=0)

    x = jnp.ones((8, 30, 50, 16))
    assert "__ynn_fusion" not in xla.jit(f).lower(x).compile().as_text()
    np.testing.assert_allclose(xla.jit(f)(x), jax.jit(f)(x), rtol=1e-6)
    monkeypatch.setenv("MPLP_XLA_DEFAULTS", "1")
    assert xla.default_options() == {} and xla.compiler_options() is None


# ---------------------------------------------------------------------------------------------
# remat policies: what the backward pass keeps from each inner step


@pytest.mark.parametrize("learner", ["gru", "mlp"])
def test_remat_policies_keep_more_and_give_the_same_meta_gradient(learner):
    from mplp_graph.meta.objectives import task_loss

    prog = mg.compile_graph(mplp_feedforward((1, 12, 1), learner=learner, msg=3, hidden=2))
    family = SinusoidFamily(inner_steps=3, batch=6, cv_points=8)
    params = prog.init_params(jax.random.PRNGKey(0))
    prior = jax.tree_util.tree_map(lambda x: x[0], make_pool(prog, jax.random.PRNGKey(1), 1))
    task = family.sample(jax.random.PRNGKey(2))
    kept, grads = {}, {}
    for remat in ("full", "hidden", "dots", "none"):
        loss, vjp = jax.vjp(lambda p: task_loss(prog, MetaLoss(remat=remat), p, prior, task)[0], params)
        kept[remat] = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(vjp))  # residual bytes
        grads[remat] = (float(loss), vjp(jnp.ones_like(loss))[0])
    # each policy keeps strictly more of the forward pass than the one before
    assert kept["full"] < kept["hidden"] < kept["dots"] < kept["none"], kept
    for remat in ("full", "hidden", "dots"):
        assert grads[remat][0] == pytest.approx(grads["none"][0], rel=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(grads[remat][1]), jax.tree_util.tree_leaves(grads["none"][1]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * (float(jnp.max(jnp.abs(b))) + 1e-12))
    # True / False are the "full" / "none" policies
    from mplp_graph.meta.objectives import remat_policy

    assert remat_policy(True) == remat_policy("full") and remat_policy(False) == remat_policy("none")
    with pytest.raises(ValueError, match="remat must be"):
        remat_policy("half")


def test_remat_config_key_and_its_located_error(tmp_path):
    from mplp_graph.errors import ConfigError
    from mplp_graph.meta.config import load_experiment_config
    from mplp_graph.meta.run import build, meta_step

    good = tmp_path / "good.yaml"
    good.write_text("graph: {sizes: [1, 4, 1], msg: 3, hidden: 2}\nmeta:\n  remat: hidden\n")
    assert meta_step(build(load_experiment_config(good))).objective.remat == "hidden"
    bad = tmp_path / "bad.yaml"
    bad.write_text("graph: {sizes: [1, 4, 1]}\nmeta:\n  steps: 3\n  remat: half\n")
    with pytest.raises(ConfigError) as e:
        load_experiment_config(bad)
    msg = str(e.value)
    assert f"{bad}:4:3 meta.remat: expected a boolean (true or false) or one of 'full', 'hidden', 'dots' or 'none', got 'half'" in msg, msg


def test_unrolled_inner_loop_gives_the_same_meta_gradient():
    from mplp_graph.meta.objectives import task_loss

    prog = mg.compile_graph(mplp_feedforward((1, 8, 1), msg=3, hidden=2))
    family = SinusoidFamily(inner_steps=4, batch=5, cv_points=8)
    params = prog.init_params(jax.random.PRNGKey(0))
    prior = jax.tree_util.tree_map(lambda x: x[0], make_pool(prog, jax.random.PRNGKey(1), 1))
    task = family.sample(jax.random.PRNGKey(2))
    out = {}
    for unroll in (1, 2, True):
        loss, grads = jax.value_and_grad(lambda p, u=unroll: task_loss(prog, MetaLoss(unroll=u), p, prior, task)[0])(params)
        text = jax.jit(lambda p, u=unroll: task_loss(prog, MetaLoss(unroll=u), p, prior, task)[0]).lower(params).as_text()
        out[repr(unroll)] = (float(loss), grads, text.count("stablehlo.while("))  # (True == 1 as a dict key)
    assert out["1"][2] >= 1 and out["True"][2] == 0  # a loop over the steps, or none
    for unroll in ("2", "True"):
        assert out[unroll][0] == pytest.approx(out["1"][0], rel=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(out[unroll][1]), jax.tree_util.tree_leaves(out["1"][1]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * (float(jnp.max(jnp.abs(b))) + 1e-12))


def test_unroll_config_key_and_its_located_error(tmp_path):
    from mplp_graph.errors import ConfigError
    from mplp_graph.meta.config import load_experiment_config
    from mplp_graph.meta.run import build, meta_step

    good = tmp_path / "good.yaml"
    good.write_text("graph: {sizes: [1, 4, 1], msg: 3, hidden: 2}\nmeta:\n  unroll: true\n")
    assert meta_step(build(load_experiment_config(good))).objective.unroll is True
    bad = tmp_path / "bad.yaml"
    bad.write_text("graph: {sizes: [1, 4, 1]}\nmeta:\n  unroll: 0\n")
    with pytest.raises(ConfigError) as e:
        load_experiment_config(bad)
    msg = str(e.value)
    assert f"{bad}:3:3 meta.unroll:" in msg and "got 0" in msg, msg
