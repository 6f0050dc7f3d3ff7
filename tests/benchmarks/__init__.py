"""Benchmark of the MSK CDS service (not part of the unit-test run): `.venv/bin/python tests/benchmarks`."""
