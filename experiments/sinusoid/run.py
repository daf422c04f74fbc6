"""Meta-train MPLP on sinusoid regression and evaluate it against Adam (paper 4.1.1, Fig. 2).

    python experiments/sinusoid/run.py --run-dir runs/sinusoid            # train (resumable) + eval
    python experiments/sinusoid/run.py --run-dir runs/sinusoid --eval-only

Writes experiments/sinusoid/results.json and sinusoid.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from mplp_graph.cache import enable_compilation_cache
from mplp_graph.meta.config import ExperimentConfig
from mplp_graph.meta.run import evaluate, load_trained, train, write_results

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(HERE / "config.yaml"))
    ap.add_argument("--run-dir", default="runs/sinusoid")
    ap.add_argument("--steps", type=int, help="override meta.steps")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args(argv)
    enable_compilation_cache()
    raw = yaml.safe_load(Path(args.config).read_text())
    if args.steps is not None:
        raw.setdefault("meta", {})["steps"] = args.steps
    config = ExperimentConfig.model_validate(raw)
    train_s = None
    if not args.eval_only:
        t0 = time.perf_counter()
        train(config, args.run_dir)
        train_s = time.perf_counter() - t0
    setup, params, step = load_trained(args.run_dir)
    results = evaluate(setup, params)
    command = "python " + " ".join([str(Path(sys.argv[0]))] + (argv if argv is not None else sys.argv[1:]))
    doc = write_results(setup, results, Path(args.out), command=command, meta_steps=step, train_s=train_s)
    print({k: round(v, 5) if isinstance(v, float) else v for k, v in doc["metrics"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
