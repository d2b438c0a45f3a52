"""Printing a rich table so it stays readable where it lands: a terminal, a pipe, a file.

rich lays a table out in the console's width, and a console that is not a terminal
(``dynroute demo | tee log``, a CI log, ``> out.txt``) is 80 columns wide: a wider table
is squeezed and its cells folded mid-word (``top_p(p=0.4, normalize=T`` / ``rue)``).
:func:`print_table` prints to a terminal as rich does and everywhere else at the table's
natural width, since a pipe or a file has no width to fit.

Example:
    >>> import io
    >>> from rich.console import Console
    >>> from rich.table import Table
    >>> t = Table("router", "note")
    >>> t.add_row("top_p(p=0.4, normalize=True)", "x" * 70)
    >>> out = io.StringIO()
    >>> print_table(Console(file=out, width=80), t)
    >>> "top_p(p=0.4, normalize=True)" in out.getvalue()
    True
"""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.segment import Segments

__all__ = ["print_table"]

#: The widest a table printed to a pipe or a file may get (a runaway cell stays bounded).
MAX_PIPE_WIDTH = 400


def print_table(console: Console, table: RenderableType) -> None:
    """Print ``table`` to ``console``: fitted to a terminal; to a pipe or a file at its
    natural width (up to :data:`MAX_PIPE_WIDTH` columns), never folded at 80.
    """
    if console.is_terminal:
        console.print(table)
        return
    wide = console.options.update_width(MAX_PIPE_WIDTH)
    width = max(console.width, Measurement.get(console, wide, table).maximum)
    lines = console.render_lines(table, wide.update_width(width), pad=False, new_lines=True)
    console.print(Segments([seg for line in lines for seg in line]), crop=False)
