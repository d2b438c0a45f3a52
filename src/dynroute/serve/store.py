"""The routing proxy's database (SQLAlchemy Core): keys, the spend ledger, the decision log.

``--db URL`` is ``sqlite:///PATH`` (the embedded default: WAL mode with ``synchronous =
NORMAL``, a 10 s busy timeout, every transaction ``BEGIN IMMEDIATE``) or
``postgresql://USER:PASS@HOST/DB`` (the psycopg 3 driver; several proxy replicas share one).
Four tables, created on open (idempotent):

- ``dynroute_keys``: ``name``, ``key_sha256`` (the key's SHA-256 hex digest, never the key)
  and its limits (``usd_per_day``, ``usd_per_month``, ``requests_per_minute``,
  ``prompt_tokens_per_minute``; NULL: unlimited);
- ``dynroute_spend``: one row per forwarded request (``key_name``, ``time`` in epoch
  seconds, ``usd``, ``prompt_tokens``, ``completion_tokens``, ``backend``, ``settled``):
  written with the estimate before the backend is called, settled to usage × prices after;
- ``dynroute_key_totals``: each key's USD per UTC day and month (``period``:
  ``day:2026-12-06``, ``month:2026-12``), kept with the ledger in the same transactions, so
  a check reads two rows however long the month (the per-minute limits read the ledger's
  last 60 s);
- ``dynroute_decisions``: the decision log's rows (``time``, ``key_name``, ``row``: the
  JSON line ``--log FILE`` writes), for ``dynroute llm log-export``.

:meth:`Store.reserve` is the one place a budget is charged: it locks the key's row
(PostgreSQL ``SELECT ... FOR UPDATE``; SQLite ``BEGIN IMMEDIATE`` locks the whole file),
sums the key's spend, asks ``check`` (:func:`~dynroute.serve.budgets.check_limits`) and
inserts the reservation, in one transaction: two proxies on one database see each other's
reservations. Settlements and decision rows
go through one writer thread (:meth:`Store.later`), so a request never waits for them.
Every method blocks: call it in a thread from async code.

Example:
    >>> import tempfile, pathlib
    >>> url = "sqlite:///" + str(pathlib.Path(tempfile.mkdtemp()) / "proxy.db")
    >>> store = open_store(url)
    >>> store.sync_keys([KeyRow("team-a", "ab" * 32, usd_per_day=1.0)])
    >>> ok = store.reserve("ab" * 32, Charge(0.25, 12, "small", 1e9), lambda k, u, c: None)
    >>> ok.key_name, store.usage("team-a", 1e9).usd_day
    ('team-a', 0.25)
    >>> store.close()
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from dynroute.common.files import atomic_path
from dynroute.serve.keyfile import LIMIT_FIELDS

__all__ = [
    "Charge",
    "KeyRow",
    "Refusal",
    "Reservation",
    "Store",
    "Usage",
    "add_to_totals",
    "engine_url",
    "open_store",
    "periods",
]

#: seconds a SQLite writer waits for another's lock before failing
SQLITE_BUSY_S = 10.0

metadata = sa.MetaData()
keys_table = sa.Table(
    "dynroute_keys",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
    *(sa.Column(name, sa.Float, nullable=True) for name in LIMIT_FIELDS),
)
spend_table = sa.Table(
    "dynroute_spend",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key_name", sa.String(200), nullable=False),
    sa.Column("time", sa.Float, nullable=False),  # epoch seconds (UTC)
    sa.Column("usd", sa.Float, nullable=False),
    sa.Column("prompt_tokens", sa.Float, nullable=False),
    sa.Column("completion_tokens", sa.Float, nullable=True),
    sa.Column("backend", sa.String(200), nullable=True),
    sa.Column("settled", sa.Boolean, nullable=False, default=False),
    sa.Index("dynroute_spend_key_time", "key_name", "time"),
)
totals_table = sa.Table(
    "dynroute_key_totals",
    metadata,
    sa.Column("key_name", sa.String(200), primary_key=True),
    sa.Column("period", sa.String(20), primary_key=True),  # "day:2026-12-06", "month:2026-12"
    sa.Column("usd", sa.Float, nullable=False),
)
decisions_table = sa.Table(
    "dynroute_decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.String(40), nullable=False),
    sa.Column("key_name", sa.String(200), nullable=True),
    sa.Column("row", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class KeyRow:
    """A key as the database holds it: its name, its SHA-256 hex digest, its limits."""

    name: str
    key_sha256: str
    usd_per_day: float | None = None
    usd_per_month: float | None = None
    requests_per_minute: float | None = None
    prompt_tokens_per_minute: float | None = None


@dataclass(frozen=True)
class Charge:
    """What one request is about to spend: its estimate, before the backend is called."""

    usd: float
    prompt_tokens: float
    backend: str | None
    now: float  # epoch seconds


@dataclass(frozen=True)
class Usage:
    """A key's spend so far: this UTC day and month (USD, reservations included), and the
    last 60 s (requests, prompt tokens, the oldest request's time: None if none)."""

    usd_day: float
    usd_month: float
    requests_minute: int
    prompt_tokens_minute: float
    oldest_in_minute: float | None


@dataclass(frozen=True)
class Refusal:
    """Why a request may not go: 429 with OpenAI's ``code`` (``insufficient_quota`` or
    ``rate_limit_exceeded``), the message, and the seconds to wait (None: no point)."""

    code: str
    message: str
    retry_after_s: int | None = None
    key_name: str = ""


@dataclass(frozen=True)
class Reservation:
    """A charged request: the ledger row to settle once its cost is known, the estimate."""

    key_name: str
    ledger_id: int
    usd: float
    time: float  # epoch seconds: the day and month it is counted in


def engine_url(url: str) -> URL:
    """SQLAlchemy's URL for ``--db URL``: ``postgresql://`` (or ``postgres://``) uses the
    psycopg 3 driver; only SQLite and PostgreSQL are accepted (a ValueError says so).

    Example:
        >>> engine_url("postgresql://u:pw@db:5432/proxy").render_as_string()
        'postgresql+psycopg://u:***@db:5432/proxy'
        >>> engine_url("mysql://x/y")
        Traceback (most recent call last):
        ValueError: --db mysql://x/y: not a SQLite or PostgreSQL URL; use sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB
    """
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        parsed = None
    backend = parsed.get_backend_name() if parsed is not None else ""
    if parsed is None or backend not in ("sqlite", "postgresql", "postgres"):
        shown = url if parsed is None else parsed.render_as_string(hide_password=True)
        raise ValueError(f"--db {shown}: not a SQLite or PostgreSQL URL; {REMEDY_URL}")
    if backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


REMEDY_URL = "use sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB"


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    # the driver's own transaction handling off: the "begin" hook below issues BEGIN IMMEDIATE
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a commit survives the process being killed (what budgets need), not an
    # OS crash or power cut in the last moments; no fsync per commit (3.9 -> 1.5 ms here)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_S * 1000)}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # take the write lock at once: a reservation's read and insert see no other writer
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def periods(now: float) -> tuple[str, str]:
    """The UTC day and month ``now`` (epoch seconds) is counted in, as totals name them.

    Example:
        >>> periods(1_700_000_000)
        ('day:2023-11-14', 'month:2023-11')
    """
    t = datetime.fromtimestamp(now, UTC)
    return f"day:{t:%Y-%m-%d}", f"month:{t:%Y-%m}"


def add_to_totals(conn: Connection, key_name: str, when: float, usd: float) -> None:
    """Add ``usd`` to the key's totals of the day and month of ``when`` (a row is made on
    first use, under the key's lock: :meth:`Store.reserve`)."""
    t = totals_table.c
    for period in periods(when):
        mine = (t.key_name == key_name) & (t.period == period)
        done = conn.execute(totals_table.update().where(mine).values(usd=t.usd + usd))
        if not done.rowcount:
            row = {"key_name": key_name, "period": period, "usd": usd}
            conn.execute(totals_table.insert(), row)


def sync_key(conn: Connection, key: KeyRow) -> None:
    """Insert or update one key (see :meth:`Store.sync_keys`)."""
    k = keys_table.c
    values = {"key_sha256": key.key_sha256, **{n: getattr(key, n) for n in LIMIT_FIELDS}}
    old = conn.execute(sa.select(k.name).where(k.key_sha256 == key.key_sha256)).scalar()
    if old is not None and old != key.name:  # renamed in the keys file: its spend follows
        conn.execute(keys_table.update().where(k.name == old).values(name=key.name))
        for table in (spend_table, totals_table):
            conn.execute(table.update().where(table.c.key_name == old).values(key_name=key.name))
    if conn.execute(sa.select(k.name).where(k.name == key.name)).first():
        conn.execute(keys_table.update().where(k.name == key.name), values)
    else:
        conn.execute(keys_table.insert(), {"name": key.name, **values})


#: PostgreSQL advisory lock taken while creating the tables (any fixed number works).
SCHEMA_LOCK = 0x64796E72


def create_tables(engine: Engine) -> None:
    """The tables, if missing. Replicas started at once on one PostgreSQL would race to
    create them (the loser fails on a duplicate type): one at a time, under a lock."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
        metadata.create_all(conn)


def open_store(url: str) -> Store:
    """Connect to ``--db URL`` and create the tables if missing. A bad URL, a server that
    does not answer, a file that cannot be written: one-line ValueError naming the URL
    (password hidden) and the remedy."""
    target = engine_url(url)
    shown = target.render_as_string(hide_password=True)
    if target.get_backend_name() == "sqlite":
        path = target.database
        if not path or path == ":memory:":
            raise ValueError(f"--db {shown}: name a file (sqlite:///PATH), not memory")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"--db {shown}: cannot create its folder ({err.strerror})") from None
        engine = sa.create_engine(target, connect_args={"timeout": SQLITE_BUSY_S})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
        remedy = "check that the file and its folder are writable"
    else:
        engine = sa.create_engine(target, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        remedy = "check that the server runs, and the host, port, user, password and database"
    try:
        create_tables(engine)
    except sa.exc.SQLAlchemyError as err:
        engine.dispose()
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0][:200]
        raise ValueError(f"--db {shown}: cannot open the database ({reason}); {remedy}") from None
    return Store(engine, shown)


class Store:
    """The tables of the module doc on one engine (:func:`open_store` makes one)."""

    def __init__(self, engine: Engine, shown_url: str) -> None:
        self.engine, self.url = engine, shown_url
        self._queue: queue.Queue[Callable[[Connection], None] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="dynroute-db", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ keys

    def sync_keys(self, keys: Sequence[KeyRow]) -> None:
        """Make the table hold ``keys``: a key already stored (same hash) takes the new name
        and limits, its spend moving with it; a name already stored takes the new hash (a
        rotated key keeps its spend); keys not given stay, so replicas may add theirs."""
        for attempt in range(2):  # two replicas starting at once: one insert loses, retry
            try:
                with self.engine.begin() as conn:
                    for k in keys:
                        sync_key(conn, k)
                return
            except sa.exc.IntegrityError as err:
                if attempt:
                    raise ValueError(
                        f"--db {self.url}: cannot store the keys file's keys "
                        f"({str(err.orig).splitlines()[0][:120]}); give each key one name, "
                        "and each name one key"
                    ) from None

    # ------------------------------------------------------------------ spend

    def usage(self, key_name: str, now: float, conn: Connection | None = None) -> Usage:
        """``key_name``'s :class:`Usage` at ``now`` (epoch seconds)."""
        if conn is None:
            with self.engine.connect() as own:
                return self.usage(key_name, now, own)
        s, t = spend_table.c, totals_table.c
        day, month = periods(now)
        usd = sa.func.coalesce
        totals = dict(
            conn.execute(
                sa.select(t.period, t.usd).where(t.key_name == key_name, t.period.in_([day, month]))
            ).all()
        )
        minute = conn.execute(
            sa.select(
                sa.func.count(), usd(sa.func.sum(s.prompt_tokens), 0.0), sa.func.min(s.time)
            ).where(s.key_name == key_name, s.time > now - 60.0)
        ).one()
        return Usage(
            float(totals.get(day, 0.0)),
            float(totals.get(month, 0.0)),
            int(minute[0]),
            float(minute[1]),
            minute[2],
        )

    def reserve(
        self,
        key_sha256: str,
        charge: Charge,
        check: Callable[[KeyRow, Usage, Charge], Refusal | None],
    ) -> Reservation | Refusal | None:
        """Charge ``charge`` to the key with this hash unless ``check(key, usage, charge)``
        refuses;
        None for a key the table does not hold. One transaction, the key's row locked."""
        with self.engine.begin() as conn:
            found = conn.execute(
                keys_table.select().where(keys_table.c.key_sha256 == key_sha256).with_for_update()
            ).first()
            if found is None:
                return None
            key = KeyRow(**found._asdict())
            refusal = check(key, self.usage(key.name, charge.now, conn), charge)
            if refusal is not None:
                return refusal
            values = {
                "key_name": key.name, "time": charge.now, "usd": charge.usd,
                "prompt_tokens": charge.prompt_tokens, "backend": charge.backend, "settled": False,
            }  # fmt: skip
            inserted = conn.execute(spend_table.insert().values(**values))
            add_to_totals(conn, key.name, charge.now, charge.usd)
            return Reservation(
                key.name, int(inserted.inserted_primary_key[0]), charge.usd, charge.now
            )

    def settle(
        self,
        reservation: Reservation,
        usd: float,
        prompt_tokens: float | None,
        completion_tokens: float | None,
        backend: str | None,
    ) -> None:
        """Replace a reservation's estimate by the real cost (queued: returns at once)."""
        values: dict[str, Any] = {"usd": usd, "settled": True, "backend": backend}
        if prompt_tokens is not None:
            values["prompt_tokens"] = prompt_tokens
        if completion_tokens is not None:
            values["completion_tokens"] = completion_tokens
        statement = spend_table.update().where(spend_table.c.id == reservation.ledger_id)
        r = reservation

        def write(conn: Connection) -> None:
            conn.execute(statement, values)
            add_to_totals(conn, r.key_name, r.time, usd - r.usd)  # its rows exist: r made them

        self.later(write)

    # ------------------------------------------------------------------ decisions

    def add_decision(self, row: dict[str, Any], line: str) -> None:
        """Keep one decision log row (``line``: its JSON text; queued: returns at once)."""
        values = {"time": str(row.get("time", "")), "key_name": row.get("key"), "row": line}
        self.later(lambda conn: conn.execute(decisions_table.insert(), values))

    def decision_lines(self) -> Iterator[str]:
        """Every stored decision row's JSON line, oldest first."""
        with self.engine.connect() as conn:
            query = sa.select(decisions_table.c.row).order_by(decisions_table.c.id)
            for (line,) in conn.execution_options(yield_per=1000).execute(query):
                yield line

    def export_decisions(self, out: Path) -> int:
        """Write :meth:`decision_lines` to ``out`` as JSONL (the lines ``--log FILE``
        writes; atomically: a crash leaves no half file); the number of rows."""
        count = 0
        with atomic_path(out) as tmp, Path(tmp).open("w", encoding="utf-8") as f:
            for line in self.decision_lines():
                f.write(line + "\n")
                count += 1
        return count

    # ------------------------------------------------------------------ writer

    def later(self, work: Callable[[Connection], None]) -> None:
        """Run ``work(conn)`` on the writer thread, in a transaction with whatever else
        queued meanwhile."""
        self._queue.put(work)

    def _write_loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty() and len(batch) < 500:
                batch.append(self._queue.get_nowait())
            work = [w for w in batch if w is not None]
            if work:
                self._run(work)
            if len(work) < len(batch):  # close() asked to stop: all before it is written
                return

    def _run(self, work: list[Callable[[Connection], None]]) -> None:
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    for w in work:
                        w(conn)
                return
            except sa.exc.DBAPIError as err:  # the server went away, a deadlock: again
                if attempt == 2:
                    print(f"dynroute: --db {self.url}: lost {len(work)} writes ({err.orig})")
                time.sleep(0.5 * (attempt + 1))

    def flush(self) -> None:
        """Wait until every queued write is done (tests and exports read after it)."""
        done = threading.Event()
        self.later(lambda conn: done.set())
        done.wait()

    def close(self) -> None:
        """Write what is queued, then close the connections."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        self.engine.dispose()
