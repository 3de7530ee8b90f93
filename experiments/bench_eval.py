"""Moved to experiments/bench/eval.py; this name keeps `python -m experiments.bench_eval` working."""

import runpy

runpy.run_module("experiments.bench.eval", run_name="__main__", alter_sys=True)
