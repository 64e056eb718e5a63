"""Benchmark commands: figures printed as a table and written as JSON with the run's configuration and versions.

Benchmarks are not tests: they measure, they do not assert. Run them with ``spatial-al benchmark NAME``.
"""
