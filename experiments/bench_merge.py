"""Moved to experiments/bench/merge.py; this name keeps `python -m experiments.bench_merge` working."""

import runpy

runpy.run_module("experiments.bench.merge", run_name="__main__", alter_sys=True)
