"""Benchmark: bfloat16 learner matmuls (``graph.matmul: bfloat16``) against float32, side by side.

Three measurements, each on the same machine in one run:

* **speed**: the meta-step of the sinusoid and MNIST experiment configs with float32 and with
  bfloat16 matmul operands (float32 accumulation and state), interleaved rounds, median ms;
* **inference quality**: the trained learners of ``experiments/{sinusoid,mnist}/learner.npz``
  run with bfloat16 matmuls (no retraining): eval L2 after 5 steps (sinusoid) and accuracy@20
  (MNIST, validation images), beside the float32 figures on the same tasks and priors;
* **training quality**: the sinusoid config meta-trained from the same initialisation and key
  stream for ``--train-steps`` steps in each precision: meta-loss (mean of the last 10%) and
  eval L2 after 5 steps of the result.

    python benchmarks/precision_bench.py [--rounds 3] [--iters 5] [--train-steps 400] [--quick]

Results: ``benchmarks/results/precision_bench.json``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
import yaml
from bench_common import (  # benchmarks/ is on sys.path
    ROOT,
    _git,
    exclusive_device,
    machine_line,
    write_json_atomic,
)

from mplp_graph import xla
from mplp_graph.meta.config import ExperimentConfig
from mplp_graph.meta.evaluate import evaluate_mplp
from mplp_graph.meta.run import (
    build,
    initial_params,
    load_params_file,
    make_family,
    meta_step,
)
from mplp_graph.meta.step import make_pool, trainable_mask

PRECISIONS = ("float32", "bfloat16")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config(name: str, matmul: str, **meta) -> ExperimentConfig:
    raw = yaml.safe_load((ROOT / "experiments" / name / "config.yaml").read_text())
    raw["graph"]["matmul"] = matmul
    raw["meta"].update(meta)
    return ExperimentConfig.model_validate(raw)


def speed(name: str, rounds: int, iters: int, data=None) -> dict:
    """Median ms per meta-step in each precision (interleaved rounds, the order alternating)."""
    runs = {}
    for matmul in PRECISIONS:
        setup = build(config(name, matmul), data=data)
        params = initial_params(setup)
        step = meta_step(setup)
        fn = xla.jit(step)
        pool = make_pool(setup.prog, jax.random.PRNGKey(1), setup.config.meta.pool)
        state = (params, step.init_opt_state(params))
        t0 = time.perf_counter()
        out = fn(*state, trainable_mask(params), pool, jax.random.PRNGKey(0), setup.data)
        jax.block_until_ready(out)
        runs[matmul] = {"fn": fn, "state": (out[0], out[1]), "fixed": (trainable_mask(params), pool, setup.data),
                        "first_s": time.perf_counter() - t0, "ms": []}
    with exclusive_device():  # one process at a time on a shared accelerator ($MPLP_BENCH_LOCK)
        for r in range(rounds):
            for matmul in PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]:
                run = runs[matmul]
                mask, pool, data_ = run["fixed"]
                t0 = time.perf_counter()
                for i in range(iters):
                    out = run["fn"](*run["state"], mask, pool, jax.random.PRNGKey(100 + i), data_)
                    run["state"] = (out[0], out[1])
                jax.block_until_ready(out)
                run["ms"].append((time.perf_counter() - t0) / iters * 1e3)
    row = {m: {"ms": round(statistics.median(runs[m]["ms"]), 2), "ms_rounds": [round(x, 2) for x in runs[m]["ms"]],
               "first_call_s": round(runs[m]["first_s"], 2)} for m in PRECISIONS}
    row["bf16_over_f32"] = round(row["bfloat16"]["ms"] / row["float32"]["ms"], 3)
    return row


def sinusoid_inference(runs: int) -> dict:
    out = {}
    for matmul in PRECISIONS:
        setup = build(config("sinusoid", matmul))
        params = load_params_file(setup, ROOT / "experiments/sinusoid/learner.npz")
        ev = np.asarray(evaluate_mplp(setup.prog, setup.fwd, params, setup.family, jax.random.PRNGKey(12346), runs)["loss"])
        out[matmul] = {"eval_l2_step5": float(ev[:, -1].mean()), "std": float(ev[:, -1].std()), "curve": ev.mean(0).round(6).tolist()}
    return out


def mnist_inference(runs: int, data) -> dict:
    out = {}
    for matmul in PRECISIONS:
        setup = build(config("mnist", matmul), data=data)
        params = load_params_file(setup, ROOT / "experiments/mnist/learner.npz")
        # the protocol on the validation split (inner batches from the meta-training split), accuracy after each update
        r = evaluate_mplp(setup.prog, setup.fwd, params, setup.family, jax.random.PRNGKey(12346), runs, data=setup.data, split="validation")
        acc = np.asarray(r["accuracy"])[:, 1:]
        out[matmul] = {"val_acc20": float(acc[:, -1].mean()), "std": float(acc[:, -1].std())}
    return out


def sinusoid_training(steps: int, eval_runs: int) -> dict:
    """Meta-train the sinusoid config from the same init and keys in each precision."""
    out = {}
    for matmul in PRECISIONS:
        setup = build(config("sinusoid", matmul, steps=steps))
        params = initial_params(setup)
        step = meta_step(setup)
        fn = xla.jit(step)
        mask = trainable_mask(params)
        pool = make_pool(setup.prog, jax.random.PRNGKey(1), setup.config.meta.pool)
        opt = step.init_opt_state(params)
        key = jax.random.PRNGKey(2)
        losses = []
        t0 = time.perf_counter()
        for s in range(steps):
            params, opt, m = fn(params, opt, mask, pool, jax.random.fold_in(key, s))
            losses.append(m["loss"])
        losses = np.asarray(jax.device_get(losses), float)
        wall = time.perf_counter() - t0
        # evaluate both results with float32 matmuls, so only the training differs
        ev_setup = build(config("sinusoid", "float32"))
        ev = np.asarray(evaluate_mplp(ev_setup.prog, ev_setup.fwd, params, ev_setup.family, jax.random.PRNGKey(12346), eval_runs)["loss"])
        tail = max(1, steps // 10)
        out[matmul] = {"meta_loss_last10pct": float(losses[-tail:].mean()), "meta_loss_first10pct": float(losses[:tail].mean()),
                       "eval_l2_step5": float(ev[:, -1].mean()), "std": float(ev[:, -1].std()), "train_s": round(wall, 1),
                       "meta_loss_every_10": losses[::10].round(5).tolist()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--mnist-iters", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--eval-runs", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 iterations, 20 training steps, 10 eval runs")
    ap.add_argument("--note", help="free text stored as 'note' (e.g. other load on the machine)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/precision_bench.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.iters, args.mnist_iters, args.train_steps, args.eval_runs = 1, 2, 1, 20, 10
    doc = {
        "machine": machine_line(), "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "git_commit": _git("rev-parse", "--short", "HEAD"), "git_dirty": bool(_git("status", "--porcelain")),
        "date": datetime.date.today().isoformat(), "settings": vars(args) | {"out": str(args.out)},
        "note": args.note,
        "inference_learners": {name: {"file": f"experiments/{name}/learner.npz", "sha256": _sha256(ROOT / "experiments" / name / "learner.npz")}
                               for name in ("sinusoid", "mnist")},
    }
    meta = make_family(config("mnist", "float32").task).load()  # the MNIST family's arrays, loaded once
    doc["speed"] = {"sinusoid": speed("sinusoid", args.rounds, args.iters), "mnist": speed("mnist", args.rounds, args.mnist_iters, meta)}
    print("speed", {k: v["bf16_over_f32"] for k, v in doc["speed"].items()}, flush=True)
    write_json_atomic(args.out, doc)  # each part as it is done: a run cut off keeps what finished
    doc["inference"] = {"sinusoid": sinusoid_inference(args.eval_runs), "mnist": mnist_inference(args.eval_runs, meta)}
    print("inference", doc["inference"]["sinusoid"]["float32"]["eval_l2_step5"], doc["inference"]["sinusoid"]["bfloat16"]["eval_l2_step5"],
          doc["inference"]["mnist"]["float32"]["val_acc20"], doc["inference"]["mnist"]["bfloat16"]["val_acc20"], flush=True)
    write_json_atomic(args.out, doc)
    doc["training"] = {"sinusoid": sinusoid_training(args.train_steps, args.eval_runs)}
    tr = doc["training"]["sinusoid"]
    print("training", {m: (round(tr[m]["meta_loss_last10pct"], 5), round(tr[m]["eval_l2_step5"], 5)) for m in PRECISIONS}, flush=True)
    write_json_atomic(args.out, doc)
    print(f"{'':24s} {'float32':>10s} {'bfloat16':>10s}")
    for name, row in doc["speed"].items():
        print(f"{name + ' meta-step ms':24s} {row['float32']['ms']:10.1f} {row['bfloat16']['ms']:10.1f}")
    print(f"{'sinusoid eval L2@5':24s} {doc['inference']['sinusoid']['float32']['eval_l2_step5']:10.5f} {doc['inference']['sinusoid']['bfloat16']['eval_l2_step5']:10.5f}")
    print(f"{'mnist val acc@20':24s} {doc['inference']['mnist']['float32']['val_acc20']:10.4f} {doc['inference']['mnist']['bfloat16']['val_acc20']:10.4f}")
    print(f"{'trained: eval L2@5':24s} {tr['float32']['eval_l2_step5']:10.5f} {tr['bfloat16']['eval_l2_step5']:10.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
