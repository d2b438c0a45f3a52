"""The sweep: every method at every target, the static smaller-k baseline, the cheap fixes.

Each row is one routing setting of one model measured on the evaluation windows; rows
share ``base_val_loss`` (the trained top-k model's), so ``loss_delta_pct`` compares.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from dynroute.posthoc.calibrate import calibrate
from dynroute.posthoc.measure import Measurement, measure
from dynroute.posthoc.methods import METHODS, STATIC, Method
from dynroute.posthoc.slots import DynMoESlot, NullGate, Slot, moe_slots
from dynroute.posthoc.tune import fine_tune, gate_parameters

__all__ = ["FIXES", "NULL_GATE", "SweepData", "SweepSettings", "check_targets", "run_fix", "sweep"]

#: The cheap fixes: router-only fine-tune, AdaMoE null experts fine-tuned, distillation.
FIXES = ("router_ft", "null_ft", "distill")


class NullGateMethod(Method):
    """Null experts in the gate (:class:`NullGate`), knob = the null columns' bias."""

    def apply(self, slot: Slot, value: float) -> None:
        if not isinstance(slot, DynMoESlot):
            raise TypeError("null experts in the gate: DynMoE models only (dynroute.hf "
                            "adapters refuse extra gate columns)")  # fmt: skip
        gate = slot.add_null_experts(slot.k)
        gate.null_bias.data.fill_(value)


#: The null-expert fix's calibration: one bias for the k null columns of each layer.
NULL_GATE = NullGateMethod("null_gate", "null_experts", "null_bias", False,
                           "AdaMoE: k null experts in the gate, bias calibrated",
                           low=-30.0, high=30.0)  # fmt: skip


@dataclass
class SweepData:
    """What a sweep runs on.

    Attributes:
        windows: evaluation windows [n, T + 1] (held out).
        calib: input batches [B, T] of held-in text to calibrate on.
        train_tokens: held-in ids [L] for the fixes (None: no fixes).
    """

    windows: np.ndarray
    calib: list[Tensor]
    train_tokens: np.ndarray | None = None


@dataclass
class SweepSettings:
    """Targets (fractions of k), methods, fixes and their budget.

    Attributes:
        fix_targets: the targets the fixes run at (None: every target below 1).
        fix_method: the training-free method a router fine-tune and distillation start from.
        fix_tokens: tokens each fix trains on (``fix_batch x fix_seq_len`` per step).
        fix_lr: the fixes' learning rate.
    """

    targets: Sequence[float] = (1.0, 0.9, 0.75, 0.6, 0.5)
    methods: Sequence[str] = (STATIC, *METHODS)
    fixes: Sequence[str] = ()
    fix_targets: Sequence[float] | None = None
    fix_method: str = "top_p_norm"
    fix_tokens: int = 8192
    fix_batch: int = 4
    fix_seq_len: int = 128
    fix_lr: float = 1e-3
    batch_size: int = 8


def check_targets(targets: Sequence[float]) -> list[float]:
    """Targets as fractions of k, each in (0, 1].

    Example:
        >>> check_targets([1, 0.5])
        [1.0, 0.5]
    """
    out = [float(t) for t in targets]
    for t in out:
        if t > 1.0:
            raise ValueError(f"--targets {t:g}: above the model's k (targets are fractions of "
                             "k, in (0, 1]; 1 is the model as trained)")  # fmt: skip
        if not t > 0.0:
            raise ValueError(f"--targets {t:g}: a target is a fraction of k in (0, 1]")
    if not out:
        raise ValueError("--targets: give at least one fraction of k, e.g. 1,0.75,0.5")
    return out


def _row(m: Measurement, base: Measurement, k: int, **fields: Any) -> dict[str, Any]:
    return {
        **fields,
        "k": k,
        "mean_experts": m.mean_experts,
        "expert_fraction": m.mean_experts / k,
        "val_loss": m.val_loss,
        "base_val_loss": base.val_loss,
        "loss_delta_pct": 100.0 * (m.val_loss / base.val_loss - 1.0),
        "per_layer_experts": m.per_layer,
        "top1_kept": m.top1_kept,
        "per_layer_top1_kept": m.per_layer_top1_kept,
        "eval_tokens": m.tokens,
    }


def _static(model: nn.Module, slots: Sequence[Slot], data: SweepData, base: Measurement,
            k: int) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for small in range(1, k):
        for slot in slots:
            slot.use("top_k", None, k=small)
        m = measure(model, slots, data.windows, base)
        rows.append(_row(m, base, k, method=STATIC, target=small / k, knob=f"k={small}"))
    for slot in slots:
        slot.restore()
    return rows


def run_fix(
    fix: str,
    model: nn.Module,
    data: SweepData,
    target: float,
    base: Measurement,
    settings: SweepSettings,
) -> dict[str, Any] | None:
    """One fix at one target (fraction of k) on a copy of ``model``; None where the fix
    does not apply (null experts in a transformers model's gate)."""
    if data.train_tokens is None:
        raise ValueError("fixes need held-in training tokens (SweepData.train_tokens)")
    student = copy.deepcopy(model)
    slots = moe_slots(student)
    k = slots[0].k
    if fix == "null_ft" and not all(isinstance(s, DynMoESlot) for s in slots):
        return None
    method = NULL_GATE if fix == "null_ft" else METHODS[settings.fix_method]
    calibrate(student, slots, method, target * k, data.calib)
    params = list(student.parameters()) if fix == "distill" else gate_parameters(slots)
    steps = max(1, settings.fix_tokens // (settings.fix_batch * settings.fix_seq_len))
    tuned = fine_tune(
        student, data.train_tokens, params, steps=steps, batch_size=settings.fix_batch,
        seq_len=settings.fix_seq_len, lr=settings.fix_lr,
        teacher=model if fix == "distill" else None,
    )  # fmt: skip
    cal = calibrate(student, slots, method, target * k, data.calib)  # the fix moved k̄
    m = measure(student, slots, data.windows, base, settings.batch_size)
    nulls = [s.gate for s in slots if isinstance(s.gate, NullGate)]
    return _row(
        m, base, k, method=fix, target=target, fix=fix,
        fix_from=method.name, fix_tokens=tuned.tokens, fix_steps=tuned.steps,
        knob=method.knob, knob_values=cal.values, null_columns=len(nulls) and slots[0].k,
    )  # fmt: skip


def sweep(
    model: nn.Module,
    data: SweepData,
    settings: SweepSettings,
    *,
    label: str = "model",
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure the trained model, the static smaller-k baseline, every method at every
    target and every fix; the model is left with its own top-k routing.

    Returns:
        rows (dicts): ``model``, ``k``, ``method``, ``target`` (fraction of k),
        ``mean_experts``, ``val_loss``, ``base_val_loss``, ``loss_delta_pct``,
        ``per_layer_experts``, ``top1_kept``, ... (fixes: ``fix_tokens``).
    """
    tell = progress or (lambda _text: None)
    slots = moe_slots(model)
    k = slots[0].k
    targets = check_targets(settings.targets)
    tell(f"{label}: top-{k} as trained")
    base = measure(model, slots, data.windows, batch_size=settings.batch_size)
    rows = [_row(base, base, k, method="original", target=1.0, knob=f"k={k}")]
    if STATIC in settings.methods:
        tell(f"{label}: static top-k, smaller k")
        rows += _static(model, slots, data, base, k)
    for name in settings.methods:
        if name == STATIC:
            continue
        method = METHODS[name]
        for target in targets:
            tell(f"{label}: {name} at {target:g} k")
            cal = calibrate(model, slots, method, target * k, data.calib)
            m = measure(model, slots, data.windows, base, settings.batch_size)
            rows.append(_row(m, base, k, method=name, target=target, knob=method.knob,
                             knob_values=cal.values))  # fmt: skip
        for slot in slots:
            slot.restore()
    fix_targets = settings.fix_targets or [t for t in targets if t < 1.0]
    for fix in settings.fixes:
        for target in fix_targets:
            tell(f"{label}: {fix} at {target:g} k")
            row = run_fix(fix, model, data, target, base, settings)
            if row is not None:
                rows.append(row)
    return [{"model": label, "num_experts": slots[0].num_experts, **row} for row in rows]
