"""Reliability of meta-training: versioned, checked checkpoints; exact resume after SIGKILL;
the NaN/Inf guard; determinism. All on a tiny sinusoid configuration on the CPU."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph.meta.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    graph_hash,
    latest_checkpoint,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from mplp_graph.meta.guard import NonFiniteError
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.step import MetaStep, adam, make_pool, trainable_mask
from mplp_graph.meta.train import meta_train
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward

ROOT = Path(__file__).resolve().parent.parent
TINY = {"sizes": (1, 4, 1), "msg": 2, "hidden": 3}
FAMILY = SinusoidFamily(inner_steps=2, batch=4, cv_points=6)
KEY = jax.random.PRNGKey(2)


def sample(key, data):
    """The family's tasks; NaN added to the inputs of the task whose key is ``data["bad_key"]``
    when ``data["poison"]`` is NaN (one sampler for all tests: one meta-step to compile)."""
    task = FAMILY.sample(key)
    poison = jnp.where(jnp.all(key == data["bad_key"]), data["poison"], 0.0)
    return {**task, "xt": task["xt"] + poison}


CLEAN = {"bad_key": jnp.zeros(2, jnp.uint32), "poison": jnp.float32(0.0)}


def poisoned(bad_step: int) -> dict:
    """``data`` that puts NaN into the first task of meta-step ``bad_step`` (1-based)."""
    _, k_task = jax.random.split(jax.random.fold_in(KEY, bad_step - 1))  # as MetaStep draws it
    return {"bad_key": jax.random.split(k_task, 2)[0], "poison": jnp.float32(jnp.nan)}


@dataclass(frozen=True)
class Tiny:
    prog: mg.Program
    params: dict
    pool: dict
    step: MetaStep


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    prog = mg.compile_graph(mplp_feedforward(**TINY))
    params = prog.init_params(jax.random.PRNGKey(0))
    pool = make_pool(prog, jax.random.PRNGKey(1), 4)
    return Tiny(prog, params, pool, MetaStep(prog, sample, MetaLoss(), 2, adam(3e-3)))


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def assert_bitwise_equal(a, b):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def train(tiny: Tiny, run_dir, steps, **kw):
    kw = {"checkpoint_every": 1, "progress": False, "data": CLEAN, **kw}
    params = kw.pop("params", tiny.params)
    return meta_train(kw.pop("step_fn", tiny.step), params, trainable_mask(params), tiny.pool, kw.pop("key", KEY), steps, run_dir, **kw)


# ---------------------------------------------------------------------------------------------
# determinism


def test_same_seed_gives_bitwise_identical_runs(tiny, tmp_path):
    p1, h1 = train(tiny, tmp_path / "a", 3)
    p2, h2 = train(tiny, tmp_path / "b", 3)
    assert_bitwise_equal(p1, p2)
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2] and len(h1) == 3
    assert (tmp_path / "a" / "ckpt_00000003.npz").read_bytes() == (tmp_path / "b" / "ckpt_00000003.npz").read_bytes()


# ---------------------------------------------------------------------------------------------
# checkpoint format


def test_manifest_records_version_graph_key_config_and_checksum(tiny, tmp_path):
    train(tiny, tmp_path, 2, meta={"experiment": "tiny"}, keep=1)
    # the checkpoint, the metrics and the parameters alone (params.npz, rewritten at every checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000002.json", "ckpt_00000002.npz", "metrics.jsonl", "params.npz"]
    m = read_manifest(tmp_path / "ckpt_00000002.npz")
    assert m["format_version"] == FORMAT_VERSION == 2 and m["step"] == 2 and m["trees"] == ["opt_state", "params"]
    assert m["graph"] == {"name": tiny.prog.spec.name, "hash": graph_hash(tiny.prog.spec)}
    assert m["rng_key"] == [int(x) for x in np.asarray(KEY)]
    assert m["config"]["experiment"] == "tiny" and m["config"]["meta_train"]["outer_batch"] == 2
    # the standardizer statistics and Adam's moments are in the arrays
    assert "params['W0.learn']['norm']['in_mean']" in m["arrays"] and any(k.startswith("opt_state") and ".mu" in k for k in m["arrays"])
    with np.load(tmp_path / "ckpt_00000002.npz", allow_pickle=False) as data:
        assert sorted(data.files) == sorted(m["arrays"])


def test_graph_hash_is_canonical_and_ignores_defaults():
    spec = mplp_feedforward(**TINY)
    again = mg.loads_graph(mg.dump_graph(spec))
    assert graph_hash(spec) == graph_hash(again) and len(graph_hash(spec)) == 64
    assert graph_hash(mplp_feedforward(sizes=(1, 5, 1), msg=2, hidden=3)) != graph_hash(spec)


def test_checkpoint_of_another_graph_is_refused(tiny, tmp_path):
    train(tiny, tmp_path, 1)
    other = mg.compile_graph(mplp_feedforward(sizes=(1, 4, 1), msg=2, hidden=3, activation="tanh"))
    other_step = MetaStep(other, sample, MetaLoss(), 2, adam(3e-3))
    with pytest.raises(CheckpointError) as info:
        train(tiny, tmp_path, 2, step_fn=other_step)  # refused while loading: nothing compiled or run
    msg = str(info.value)
    assert str(tmp_path / "ckpt_00000001.npz") in msg and "written for another graph" in msg
    assert f"expected graph {other.spec.name!r} with hash {graph_hash(other.spec)[:16]}" in msg
    assert f"found graph {tiny.prog.spec.name!r} with hash {graph_hash(tiny.prog.spec)[:16]}" in msg
    with pytest.raises(CheckpointError, match=r"written by a run with PRNG key \[0, 2\], but this run's key is \[0, 7\]"):
        train(tiny, tmp_path, 2, key=jax.random.PRNGKey(7))


def test_incompatible_damaged_or_pickled_checkpoints_are_refused(tiny, tmp_path):
    templates = {"params": tiny.params, "opt_state": tiny.step.init_opt_state(tiny.params)}
    path = save_checkpoint(tmp_path, 5, templates, {"note": "x"}, graph=tiny.prog.spec, rng_key=KEY)
    manifest = path.with_suffix(".json")
    good = json.loads(manifest.read_text())

    manifest.write_text(json.dumps({**good, "format_version": 3}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, templates)
    assert str(manifest) in str(info.value) and "format version 3" in str(info.value) and "reads versions 1, 2" in str(info.value)
    assert "written by a newer mplp_graph" in str(info.value)

    manifest.write_text(json.dumps(good))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="the file is damaged: its sha256 is"):
        load_checkpoint(path, templates)

    # an object array would need pickle: refused without unpickling (no checksum, as in version 1)
    np.savez(path, **{"params['x']": np.array([{"a": 1}], dtype=object)})
    manifest.write_text(json.dumps({**good, "npz_sha256": None}))
    with pytest.raises(CheckpointError, match="not a readable .npz of plain arrays"):
        load_checkpoint(path, templates)

    manifest.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read the checkpoint manifest"):
        load_checkpoint(path, templates)


def test_version_1_checkpoints_still_load(tiny, tmp_path):
    """Version 1: the manifest had no graph, key or checksum, and the caller's meta at the top."""
    templates = {"params": tiny.params, "opt_state": tiny.step.init_opt_state(tiny.params)}
    path = save_checkpoint(tmp_path, 4, templates, {})
    manifest = {"format_version": 1, "step": 4, "trees": ["opt_state", "params"], "experiment": "old"}
    path.with_suffix(".json").write_text(json.dumps(manifest))
    trees, m = load_checkpoint(path, templates, graph=tiny.prog.spec, rng_key=KEY)
    assert m["step"] == 4
    assert_bitwise_equal(trees, templates)
    # a version-1 checkpoint of another graph is still caught by its arrays
    other = mg.compile_graph(mplp_feedforward(sizes=(1, 4, 1), msg=3, hidden=3)).init_params(jax.random.PRNGKey(0))
    with pytest.raises(CheckpointError, match=r"array .*: expected float32\[.*\], found float32\[.*\]; the checkpoint was written for a different graph"):
        load_checkpoint(path, {"params": other, "opt_state": templates["opt_state"]})


def test_keeps_the_last_n_and_cleans_up_after_killed_writers(tiny, tmp_path):
    trees = {"params": tiny.params}
    (tmp_path / ".ckpt_00000002.npz.abc123").write_bytes(b"half a file")  # a writer killed mid-write
    (tmp_path / "ckpt_00000001.npz").write_bytes(b"no manifest")  # killed between the two files
    for s in range(2, 7):
        save_checkpoint(tmp_path, s, trees, {}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ckpt_0000000{s}.{e}" for s in (5, 6) for e in ("json", "npz")]
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000006.npz"
    (tmp_path / "ckpt_00000007.npz").write_bytes(b"arrays written, manifest not yet")
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000006.npz"


# ---------------------------------------------------------------------------------------------
# the NaN/Inf guard


def test_nan_in_a_learner_names_the_learner_and_writes_nothing(tiny, tmp_path):
    bad = {k: dict(v) for k, v in tiny.params.items()}
    bad["W1->a0"] = {**bad["W1->a0"], "norm": {**bad["W1->a0"]["norm"], "in_mean": jnp.full_like(bad["W1->a0"]["norm"]["in_mean"], jnp.nan)}}
    with pytest.raises(NonFiniteError) as info:
        train(tiny, tmp_path, 3, params=bad)
    err = info.value
    assert err.step == 1 and isinstance(err, FloatingPointError) and isinstance(err, mg.MplpGraphError)
    c = err.diagnosis.culprit
    assert (c.arrow, c.op, c.inner_step, c.bad_params, c.bad_inputs) == ("W1->a0", "mplp_gru", 1, True, False)
    msg = str(err)
    assert "meta-step 1: non-finite meta-loss" in msg and "Parameter groups involved: 'W1->a0'" in msg
    assert "arrow 'W1->a0' (op mplp_gru, parameters params['W1->a0']['net'], params['W1->a0']['norm']) was the first" in msg
    assert "non-finite meta-parameters: params['W1->a0']['norm']['in_mean']" in msg
    assert "the newest checkpoint in" in msg and "is none yet" in msg
    assert latest_checkpoint(tmp_path) is None and not (tmp_path / "metrics.jsonl").exists()


def test_nan_mid_run_keeps_the_last_good_checkpoint_or_skips_the_step(tiny, tmp_path):
    with pytest.raises(NonFiniteError) as info:
        train(tiny, tmp_path / "stop", 5, data=poisoned(3))
    msg = str(info.value)
    assert info.value.step == 3 and info.value.diagnosis.bad_data == ("task['xt']",)
    assert f"is {tmp_path / 'stop' / 'ckpt_00000002.npz'} (step 2)" in msg and "Nothing was written for step 3" in msg
    assert "arrow 'x->W0'" in msg and "inner step 1 of task 0" in msg and "its inputs were already not finite" in msg
    assert latest_checkpoint(tmp_path / "stop") == tmp_path / "stop" / "ckpt_00000002.npz"
    rows = [json.loads(ln) for ln in (tmp_path / "stop" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["finite"] for r in rows)

    # on_nonfinite="skip": the step is recorded, not applied, and training goes on
    with pytest.warns(RuntimeWarning, match="meta-step 3: non-finite"):
        final, hist = train(tiny, tmp_path / "skip", 4, data=poisoned(3), on_nonfinite="skip")
    assert [h["finite"] for h in hist] == [True, True, False, True] and np.isnan(hist[2]["loss"])
    at2, _ = load_checkpoint(tmp_path / "skip" / "ckpt_00000002.npz", {"params": tiny.params})
    at3, _ = load_checkpoint(tmp_path / "skip" / "ckpt_00000003.npz", {"params": tiny.params})
    assert_bitwise_equal(at2, at3)
    assert all(np.isfinite(x).all() for x in leaves(final))


# ---------------------------------------------------------------------------------------------
# exact resume after SIGKILL

SCRIPT = """
import sys
import jax
from mplp_graph.cache import enable_compilation_cache
enable_compilation_cache()
import mplp_graph as mg
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.step import MetaStep, adam, make_pool, trainable_mask
from mplp_graph.meta.train import meta_train
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward

prog = mg.compile_graph(mplp_feedforward(sizes=(1, 4, 1), msg=2, hidden=3))
params = prog.init_params(jax.random.PRNGKey(0))
pool = make_pool(prog, jax.random.PRNGKey(1), 4)
step = MetaStep(prog, SinusoidFamily(inner_steps=2, batch=4, cv_points=6).sample, MetaLoss(), 2, adam(3e-3))
meta_train(step, params, trainable_mask(params), pool, jax.random.PRNGKey(2), int(sys.argv[2]), sys.argv[1],
           checkpoint_every=1, progress=False)
"""
KILL_STEPS = 80
KILLS = int(os.environ.get("MPLP_KILLS", "1"))  # kill-resume rounds before the last resume (more: a local stress run)


def start(run_dir: Path) -> subprocess.Popen:
    # no persistent compilation cache in a process that is killed at a random moment: a kill
    # while it writes a cache entry would leave a truncated entry that crashes later readers
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLP_GRAPH_CACHE": "off"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(run_dir), str(KILL_STEPS)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def final_state(run_dir: Path) -> tuple[dict, list]:
    ckpt = latest_checkpoint(run_dir)
    assert ckpt == run_dir / f"ckpt_{KILL_STEPS:08d}.npz"
    with np.load(ckpt, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return arrays, rows


def test_sigkill_at_a_random_moment_then_resume_is_bitwise_identical(tmp_path):
    ref = start(tmp_path / "ref")
    out = ref.communicate(timeout=300)[0]
    assert ref.returncode == 0, out.decode()[-3000:]
    want, want_rows = final_state(tmp_path / "ref")
    loop_s = sum(r["step_s"] for r in want_rows[1:])  # the loop after the first (compiling) step
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    run_dir = tmp_path / "killed"
    kills, mid_write = [], 0
    for _ in range(KILLS):
        victim = start(run_dir)
        done = kills[-1] if kills else 0
        while victim.poll() is None and (latest_checkpoint(run_dir) is None or read_manifest(latest_checkpoint(run_dir))["step"] <= done):
            time.sleep(0.01)
        remaining = KILL_STEPS - read_manifest(latest_checkpoint(run_dir))["step"]
        time.sleep(rng.uniform(0.0, 0.5 * loop_s * remaining / KILL_STEPS))  # in the first half of what is left
        victim.send_signal(signal.SIGKILL)
        out = victim.communicate(timeout=60)[0]
        if kills and victim.returncode == 0:
            break  # a stress run with many kills got to the end
        assert victim.returncode == -signal.SIGKILL, f"the run ended before the kill (seed {seed}): {out.decode()[-3000:]}"
        kills.append(read_manifest(latest_checkpoint(run_dir))["step"])
        # killed while writing: a temporary file, or arrays whose manifest was not written yet
        mid_write += bool(list(run_dir.glob(".*")) or any(not p.with_suffix(".json").exists() for p in run_dir.glob("ckpt_*.npz")))
    last = start(run_dir)
    out = last.communicate(timeout=300)[0]
    assert last.returncode == 0, out.decode()[-3000:]
    got, got_rows = final_state(run_dir)
    context = f"seed {seed}, killed after checkpoints {kills}, {mid_write} kill(s) during a write"
    assert sorted(got) == sorted(want), context
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].tobytes() == want[k].tobytes(), f"{k} differs ({context})"
    assert [r["step"] for r in got_rows] == list(range(1, KILL_STEPS + 1)), context
    assert [r["loss"] for r in got_rows] == [r["loss"] for r in want_rows], context
    assert [(r["hint"], r["cv"]) for r in got_rows] == [(r["hint"], r["cv"]) for r in want_rows], context
    assert not list(run_dir.glob(".*")), "temporary files left behind"
    print(f"exact resume: {context}, {KILL_STEPS} steps")
