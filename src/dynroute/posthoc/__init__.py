"""Dynamic routing after training: how much compute a trained top-k model can give back.

For a trained top-k model (a ``dynroute train`` run, or a transformers MoE checkpoint
through ``dynroute.hf``), apply each training-free router post hoc at target mean experts
per token (fractions of k), calibrated on held-in text, and measure validation loss,
experts per token per layer and the share of tokens that keep their top-1 expert; then
the cheap fixes (router-only fine-tune, null experts, distillation) on a stated token
budget. ``dynroute posthoc MODEL`` runs it; ``benchmarks/posthoc.py`` measures it.

Example:
    >>> import torch
    >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
    >>> model = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=2,
    ...     n_heads=2, d_ff=16, num_experts=4, router={"name": "top_k", "k": 2}))
    >>> data = SweepData(torch.randint(0, 32, (4, 17)).numpy(), [torch.randint(0, 32, (4, 16))])
    >>> rows = sweep(model, data, SweepSettings(targets=[0.75], methods=["top_k", "top_p_norm"]))
    >>> [(r["method"], r["target"]) for r in rows]
    [('original', 1.0), ('top_k', 0.5), ('top_p_norm', 0.75)]
"""

from dynroute.posthoc.calibrate import Calibrated, calibrate
from dynroute.posthoc.measure import Measurement, measure
from dynroute.posthoc.methods import METHODS, STATIC, Method, method_names
from dynroute.posthoc.run import posthoc_model
from dynroute.posthoc.slots import DenseModelError, NullGate, moe_slots
from dynroute.posthoc.sweep import FIXES, SweepData, SweepSettings, check_targets, run_fix, sweep
from dynroute.posthoc.tune import TuneResult, fine_tune, gate_parameters

__all__ = [
    "FIXES",
    "METHODS",
    "STATIC",
    "Calibrated",
    "DenseModelError",
    "Measurement",
    "Method",
    "NullGate",
    "SweepData",
    "SweepSettings",
    "TuneResult",
    "calibrate",
    "check_targets",
    "fine_tune",
    "gate_parameters",
    "measure",
    "method_names",
    "moe_slots",
    "posthoc_model",
    "run_fix",
    "sweep",
]
