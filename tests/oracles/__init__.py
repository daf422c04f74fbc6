"""Hand-written jax.numpy versions of what the engine computes: the oracles the tests compare the
engine with, and the ``direct`` variants of the benchmark cases (benchmarks/cases/). Imported by
package name (``tests.oracles.direct_mplp``): pytest and ``python -m benchmarks.run_all`` both
put the repository root on the path (pyproject.toml's pytest ``pythonpath``)."""
