"""The MoE layer speed suite behind `benchmarks/layer.py` (which parses its flags).

Modules: `cells` (one cell, every implementation on the same weights and routing),
`timing`, `memory` (peak tensor memory of a call), `hf_experts` (transformers' expert
implementations), `scattermoe_impl`, `report` (resumable JSON, tables, chart), `suite`
(run with progress), `gpu_shapes` (released models' layers on a GPU).

Not part of the installed package: importable from a source checkout, where
`benchmarks/` is on the path (the scripts' own folder; pytest adds it too).
"""
