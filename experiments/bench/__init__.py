"""Benchmarks that print the figures in the README: python -m experiments.bench.<name>."""
