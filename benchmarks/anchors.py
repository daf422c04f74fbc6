"""Figures to compare against that this repository cannot re-measure with its own code: the
authors' TensorFlow implementation of MPLP (Randazzo, Niklasson, Mordvintsev 2020), unmodified,
tensorflow-cpu 2.15.1 (keras 2.15, numpy 1.26.4, default threads), measured on this project's
2-core CPU machine back to back with the engine, three rounds, on an idle machine; the step is the
notebooks' ``@tf.function`` training step including the host sync, after warm-up.
docs/performance.md discusses them; ``python -m benchmarks.run_all`` prints them beside the
engine's rows of the same workload."""

from __future__ import annotations

SOURCE = "the authors' TensorFlow code (Randazzo et al. 2020), tensorflow-cpu 2.15.1, measured on this 2-core machine"

# case name -> (milliseconds per timed unit, what it is)
ANCHORS: dict[str, tuple[float, str]] = {
    "mnist_meta_step": (800.0, "TF meta-step (p10/p90 0.74/0.91 s); the engine measured in the same rounds: 0.79 s"),
    "sinusoid_meta_step": (215.0, "TF meta-step (p10/p90 0.19/0.26 s); the engine measured in the same rounds: 0.106 s"),
    "eval_mnist": (100_000.0, "TF notebooks' eager loop, ~1 s per run x 100 runs (measured under load)"),
}
