"""The bottom layer: helpers every dynroute package may use, importing nothing of dynroute.

- :mod:`~dynroute.common.files`: atomic writes (text, bytes, ``torch.save``) — the one way
  a dynroute file is written, so a crash never leaves half a file;
- :mod:`~dynroute.common.registry`: name → class registries with plugin discovery and the
  ``name:key=value,...`` spec parser, shared by routers, expert kinds, query routers and
  model types;
- :mod:`~dynroute.common.html`: the one HTML page helper (tables, figures, one stylesheet);
- :mod:`~dynroute.common.jsonfile`: strict JSON results files (NaN written as ``null``);
- :mod:`~dynroute.common.numbers`: ``format_number``, the one number format of tables (no
  ``-0.0000``);
- :mod:`~dynroute.common.tables`: ``print_table``, a rich table whole in a pipe or a file;
- :mod:`~dynroute.common.net`: ``free_port``.

The package ``__init__`` imports nothing heavy, so ``from dynroute.common.files import
atomic_write_text`` is cheap anywhere.
"""
