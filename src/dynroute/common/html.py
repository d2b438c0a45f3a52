"""The one HTML page helper: self-contained report pages (tables, embedded PNG figures).

Every ``report.html`` dynroute writes (``dynroute analyze``, ``dynroute adaptive report``,
``dynroute llm report``, ``dynroute demo``) is built from these pieces, so they share one
stylesheet and one escaping rule: every text cell is escaped here, callers pass plain text.

Example:
    >>> doc = page("Demo", [heading("Results"), table(["router", "loss"], [["top_k", 1.5]])])
    >>> "<td class=\\"num\\">1.5</td>" in doc and doc.startswith("<!doctype html>")
    True
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dynroute.common.files import atomic_write_bytes, atomic_write_text

__all__ = [
    "CSS",
    "escape",
    "figure",
    "heading",
    "note",
    "page",
    "png_bytes",
    "table",
    "write_figure",
    "write_page",
]

CSS = """
body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%}code{background:#f3f3f3;padding:0 3px}.note{color:#555;max-width:70em}
details{margin:.3em 0}summary{cursor:pointer}
"""

escape = html.escape


def heading(text: str, level: int = 2, anchor: str | None = None) -> str:
    """``<h2 id=anchor>text</h2>`` (text escaped).

    Example:
        >>> heading("a < b", 1)
        '<h1>a &lt; b</h1>'
    """
    ident = f' id="{escape(anchor)}"' if anchor else ""
    return f"<h{level}{ident}>{escape(text)}</h{level}>"


def note(text: str) -> str:
    """A grey explanatory paragraph (text escaped)."""
    return f'<p class="note">{escape(text)}</p>'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: bool = True) -> str:
    """An HTML table; columns after the first are right-aligned numbers if ``numeric``.

    Example:
        >>> table(["a", "b"], [["x", 1]], numeric=False)
        '<table><tr><th>a</th><th>b</th></tr><tr><td>x</td><td>1</td></tr></table>'
    """
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(str(c))}</td>'
            if i and numeric
            else f"<td>{escape(str(c))}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def png_bytes(fig: Any, dpi: int = 90) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def figure(png: bytes, title: str, caption: str = "", anchor: str | None = None) -> str:
    """A heading, a caption and the PNG embedded (the page stays one self-contained file).

    Example:
        >>> figure(b"png", "Load", "per expert").startswith('<h2>Load</h2><p class="note">')
        True
    """
    b64 = base64.b64encode(png).decode("ascii")
    return (
        heading(title, 2, anchor)
        + (note(caption) if caption else "")
        + f'<img alt="{escape(title)}" src="data:image/png;base64,{b64}">'
    )


def write_figure(fig: Any, path: Path | str, dpi: int = 90) -> bytes:
    """Save a matplotlib figure as ``path`` (PNG, atomically) and return its bytes."""
    png = png_bytes(fig, dpi)
    atomic_write_bytes(path, png)
    return png


def page(title: str, sections: Iterable[str]) -> str:
    """One self-contained HTML document: the stylesheet, ``title``, the HTML ``sections``."""
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>"
    )


def write_page(path: Path | str, title: str, sections: Iterable[str]) -> Path:
    """Write :func:`page` to ``path`` atomically; returns the path."""
    atomic_write_text(path, page(title, sections))
    return Path(path)
