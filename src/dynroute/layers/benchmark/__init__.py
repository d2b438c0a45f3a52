"""The MoE layer speed suite: dynroute vs transformers' expert implementations vs the GEMM bound.

``dynroute bench layer`` (or ``python -m dynroute.layers.benchmark``, or
``benchmarks/layer.py`` in a source checkout) runs it; :func:`~dynroute.layers.benchmark.run.main`
parses its flags. Modules: :mod:`.cells` (one cell, every implementation on the same
weights and routing), :mod:`.timing`, :mod:`.memory` (peak tensor memory of a call),
:mod:`.hf_experts` (transformers' expert implementations), :mod:`.report` (resumable
JSON, tables, chart), :mod:`.suite` (run with progress), :mod:`.gpu_shapes` (released
models' layers on a GPU).
"""
