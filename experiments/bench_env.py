"""Moved to experiments/bench/env.py; this name keeps `python -m experiments.bench_env` working."""

import runpy

runpy.run_module("experiments.bench.env", run_name="__main__", alter_sys=True)
