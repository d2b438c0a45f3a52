"""Which part of a growing completion may be shown: stop strings and partial characters.

A streamed text can end in the start of a stop string or half a UTF-8 character (U+FFFD);
:func:`visible_text` holds both back, so the streamed pieces add up to the final text.

Example:
    >>> visible_text("x = 1\\nde", ["\\ndef"], final=False)
    ('x = 1', False)
    >>> visible_text("x = 1\\ndef f", ["\\ndef"], final=False)
    ('x = 1', True)
    >>> visible_text("x = 1\\nde", ["\\ndef"], final=True)
    ('x = 1\\nde', False)
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["visible_text"]

REPLACEMENT = "\ufffd"


def visible_text(text: str, stops: Sequence[str], final: bool) -> tuple[str, bool]:
    """``(text that may be shown, whether a stop string was found)``.

    Args:
        text: the decoded completion so far.
        stops: stop strings; the text is cut before the earliest occurrence of any.
        final: no more tokens will come (nothing is held back then).
    """
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], True
    if final:
        return text, False
    keep = len(text)
    while keep and text[keep - 1] == REPLACEMENT:  # an unfinished multi-byte character
        keep -= 1
    for stop in stops:
        # the longest suffix of the text that starts this stop string
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                keep = min(keep, len(text) - k)
                break
    return text[:keep], False
