"""``--expert-memory``: a size (``2GB``, ``512MiB``, bytes) or a share of the experts (``50%``).

Example:
    >>> slots_for_budget("50%", total_experts=16, expert_bytes=1000)
    8
    >>> slots_for_budget("4kB", total_experts=16, expert_bytes=1000)
    4
    >>> try:
    ...     slots_for_budget("0", 16, 1000)
    ... except BudgetError as e:
    ...     print(e)
    --expert-memory '0': must be more than 0 (e.g. 50% or 2GB)
"""

from __future__ import annotations

import re

__all__ = ["FLAG", "BudgetError", "parse_budget", "slots_for_budget"]

FLAG = "--expert-memory"
UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(%|[a-zA-Z]*)\s*$")


class BudgetError(ValueError):
    """A budget that is not a size or a share, is 0, or is larger than the experts."""


def parse_budget(text: str | float | int) -> tuple[float, str]:
    """(value, unit): unit ``"share"`` (0 < value, 1 = all experts) or ``"bytes"``.

    Example:
        >>> parse_budget("25%"), parse_budget("1.5GiB"), parse_budget(0.5)
        ((0.25, 'share'), (1610612736.0, 'bytes'), (0.5, 'share'))
    """
    if isinstance(text, float | int) and not isinstance(text, bool):
        value, unit = (float(text), "share") if 0 < text <= 1 else (float(text), "bytes")
    else:
        match = PATTERN.match(str(text))
        suffix = match.group(2).lower() if match else None
        if match is None or (suffix != "%" and suffix not in UNITS):
            raise BudgetError(
                f"{FLAG} {text!r}: not a size or a share; give e.g. 50% or 2GB or 512MiB"
            )
        number = float(match.group(1))
        value, unit = (
            (number / 100, "share") if suffix == "%" else (number * UNITS[suffix], "bytes")
        )
    if value <= 0:
        raise BudgetError(f"{FLAG} {text!r}: must be more than 0 (e.g. 50% or 2GB)")
    return value, unit


def slots_for_budget(text: str | float | int, total_experts: int, expert_bytes: int) -> int:
    """Expert slots a budget buys: at least 1, at most every expert (more: an error)."""
    value, unit = parse_budget(text)
    model = total_experts * expert_bytes
    if unit == "share":
        if value > 1:
            raise BudgetError(f"{FLAG} {text!r}: more than 100% of the experts; give at most 100%")
        slots = round(value * total_experts)
    else:
        if value > model:
            raise BudgetError(
                f"{FLAG} {text!r}: larger than the model's experts ({model:,} bytes); "
                "give less, or run without it"
            )
        slots = int(value // expert_bytes)
    if slots < 1:
        raise BudgetError(
            f"{FLAG} {text!r}: less than one expert ({expert_bytes:,} bytes); give more"
        )
    return slots
