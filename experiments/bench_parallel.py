"""Moved to experiments/bench/parallel.py; this name keeps `python -m experiments.bench_parallel` working."""

import runpy

runpy.run_module("experiments.bench.parallel", run_name="__main__", alter_sys=True)
