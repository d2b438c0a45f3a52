"""The TOML form of ``--api-key-file``: named keys, each with optional limits.

A file whose name ends in ``.toml`` holds one ``[keys.NAME]`` table per client key::

    [keys.team-a]
    key = "sk-team-a-1"
    usd_per_day = 5.0              # USD per UTC day (usage x the prices file)
    usd_per_month = 100.0          # USD per UTC calendar month
    requests_per_minute = 60       # over the last 60 s
    prompt_tokens_per_minute = 100000

Every limit is optional (absent: unlimited); :mod:`~dynroute.serve.budgets` enforces them
with the proxy's database. Any other file is the plain form: one key a line.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "keys.toml"
    >>> _ = path.write_text('[keys.team-a]\\nkey = "sk-1"\\nusd_per_day = 5\\n')
    >>> spec = read_key_file(path)[0]
    >>> spec.name, spec.key, spec.usd_per_day, spec.usd_per_month, spec.limited
    ('team-a', 'sk-1', 5.0, None, True)
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LIMIT_FIELDS", "KeySpec", "is_toml_key_file", "read_key_file"]

#: The limits a key may have (None: unlimited).
LIMIT_FIELDS = ("usd_per_day", "usd_per_month", "requests_per_minute", "prompt_tokens_per_minute")
EXAMPLE = '[keys.team-a] with key = "sk-..." and optionally usd_per_day = 5.0'


@dataclass(frozen=True)
class KeySpec:
    """One named client key and its limits."""

    name: str
    key: str
    usd_per_day: float | None = None
    usd_per_month: float | None = None
    requests_per_minute: float | None = None
    prompt_tokens_per_minute: float | None = None

    @property
    def limited(self) -> bool:
        return any(getattr(self, f) is not None for f in LIMIT_FIELDS)


def is_toml_key_file(path: Path) -> bool:
    return path.suffix.lower() == ".toml"


def read_key_file(path: Path) -> list[KeySpec]:
    """The keys of a TOML keys file; a ValueError names the file, the key and the fix."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--api-key-file {path} is not valid TOML: {err}") from None
    table = raw.get("keys")
    if not isinstance(table, dict) or not table:
        raise ValueError(f"--api-key-file {path} has no [keys.NAME] table; write {EXAMPLE}")
    specs, seen = [], set()
    for name, fields in table.items():
        where = f"--api-key-file {path}: keys.{name}"
        if not isinstance(fields, dict):
            raise ValueError(f"{where} is not a table; write {EXAMPLE}")
        unknown = sorted(set(fields) - {"key", *LIMIT_FIELDS})
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {unknown}; known: key, {LIMIT_FIELDS}")
        key = fields.get("key")
        if not isinstance(key, str) or not key.strip() or key.strip() != key:
            raise ValueError(f'{where} needs key = "..." (a non-empty string, no spaces)')
        if key in seen:
            raise ValueError(f"{where}: the same key is given twice; give each client its own")
        seen.add(key)
        limits = {}
        for field in LIMIT_FIELDS:
            value = fields.get(field)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{where}.{field} must be a number >= 0, got {value!r}")
            limits[field] = None if value is None else float(value)
        specs.append(KeySpec(name=str(name), key=key, **limits))
    return specs
