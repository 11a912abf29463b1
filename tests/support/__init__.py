"""Helpers shared by the test folders and the benchmarks: ``from tests.support.budget import budget``.

Benchmarks run from the repository root as ``python -m bench.NAME`` so that this package imports the
same way there.
"""
