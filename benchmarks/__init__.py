"""The benchmarks: declarative cases (benchmarks/cases/) timed by one harness (benchmarks/harness.py).
Run from the repository root: ``python -m benchmarks.run_all`` (benchmarks/README.md)."""
