"""Helpers of the `benchmarks/` scripts (timing, peak memory, the layer suite, reports).

Not part of the installed package: importable from a source checkout, where
`benchmarks/` is on the path (the scripts' own folder; pytest adds it too).
"""
