"""Benchmark helpers shared by `benchmarks/` scripts and `dynroute bench`."""
