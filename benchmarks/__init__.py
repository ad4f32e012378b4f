"""Benchmarks of the bundle, run from the bundle root as ``python -m benchmarks.<name>`` (see docs/benchmarks.md)."""
