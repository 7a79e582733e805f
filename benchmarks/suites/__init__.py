"""Benchmark suites.

Each module has ``NAME``, ``run(quick, seed)`` and ``markdown(result)``.
"""

from . import encode, fit, init, peers

SUITES = {module.NAME: module for module in (encode, fit, init, peers)}
