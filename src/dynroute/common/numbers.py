"""Numbers as table cells: one rule for missing values and for zero's sign.

``f"{-0.00001:.4f}"`` is ``"-0.0000"`` and ``f"{-0.0001:.1%}"`` is ``"-0.0%"``: a minus
sign on a value that prints as zero says "worse" where nothing differs. Every table
dynroute prints or writes (terminal tables, markdown, HTML reports) formats its numbers
with :func:`format_number`, which prints such a value as zero (``+0.0000`` with a ``+``
spec) and a missing one (None, NaN) as a dash.

Example:
    >>> [format_number(x, "+.4f") for x in (-0.00001, 0.0123, None)]
    ['+0.0000', '+0.0123', '—']
"""

from __future__ import annotations

import math
import re

__all__ = ["MISSING", "format_number"]

#: What a table shows for a value that does not exist (None, NaN).
MISSING = "—"

_NONZERO_DIGIT = re.compile(r"[1-9]")


def format_number(value: float | int | None, spec: str = ".4f", missing: str = MISSING) -> str:
    """``format(value, spec)``, except that a value printing as zero has no minus sign,
    and None / NaN print as ``missing``.

    Args:
        value: the number (int, float, numpy or torch scalar); None or NaN: missing.
        spec: a format spec (``".4f"``, ``"+.3f"``, ``".1%"``, ``",.0f"``, ``".3g"``, ...).
        missing: the text for a missing value.

    Example:
        >>> format_number(-0.0), format_number(-0.0004, ".1%"), format_number(-1e-9, ".2e")
        ('0.0000', '0.0%', '-1.00e-09')
        >>> format_number(float("nan")), format_number(float("-inf"), ".2f")
        ('—', '-inf')
    """
    if value is None:
        return missing
    number = float(value)
    if math.isnan(number):
        return missing
    text = format(value, spec)
    if "-" in text and math.isfinite(number):
        mantissa = re.split(r"[eE]", text, maxsplit=1)[0]
        if not _NONZERO_DIGIT.search(mantissa):  # rounds to zero: print a true zero
            return format(type(value)(0) if isinstance(value, int | float) else 0.0, spec)
    return text
