"""The node's state DB: the kernel's tables (outbox, inbox, sequences, exchange log,
members, invitations, peers). Services bring their own tables and Alembic branch
(``exnode_state_tables``).

SQLAlchemy Core tables; SQLite in WAL mode by default, PostgreSQL for a large center.
The schema is created and upgraded only through the Alembic migrations in
``migrations/``; ``tests/test_state.py`` checks that they match these tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from alembic.util.exc import CommandError
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
)
from sqlalchemy.exc import SQLAlchemyError

from exnode.node.base.errors import StateError

if TYPE_CHECKING:
    from exnode.node.kernel.api import StateTables

metadata = MetaData()

meta = Table(
    "meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

members = Table(
    "members", metadata,
    Column("id", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # pending|approved|rejected|revoked
    Column("sign_pub", LargeBinary, nullable=False),
    Column("enc_pub", LargeBinary, nullable=False),
    Column("cert", LargeBinary),
    Column("serial", String(64)),
    Column("requested_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

invites = Table(
    "invites", metadata,
    Column("node_id", String(64), primary_key=True),
    Column("secret", LargeBinary, nullable=False),  # one-time; the state DB is 0600
    Column("approve", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("used_at", Float),
)

outbox = Table(
    "outbox", metadata,
    Column("pkg_id", String(36), primary_key=True),
    Column("dest", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("resource", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("size", Integer, nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("next_attempt", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("status", String(16), nullable=False),  # pending|delivered|refused|expired
    Column("done_at", Float),
    Column("reason", Text),
    Index("ix_outbox_due", "status", "next_attempt"),
)

# The package bytes live apart from the outbox row: SQLite rewrites a whole row on every
# UPDATE, and the row is updated on every attempt and on its receipt.
outbox_blobs = Table(
    "outbox_blobs", metadata,
    Column("pkg_id", String(36), primary_key=True),
    Column("blob", LargeBinary, nullable=False),  # deleted once the package is settled
)

seq_out = Table(
    "seq_out", metadata,
    Column("dest", String(64), primary_key=True),
    Column("resource", String(128), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
)

inbox = Table(
    "inbox", metadata,
    Column("pkg_id", String(36), primary_key=True),
    Column("src", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("resource", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # applied|refused|waiting
    Column("received_at", Float, nullable=False),
    Column("reason", Text),
    Column("blob", LargeBinary),  # kept only while waiting for an earlier sequence
    Column("expires", Float),  # a waiting package's expiry (it is dropped then)
    Index("ix_inbox_waiting", "status", "src", "resource", "seq"),
)

seq_in = Table(
    "seq_in", metadata,
    Column("src", String(64), primary_key=True),
    Column("resource", String(128), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
)

exchange_log = Table(
    "exchange_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("pkg_id", String(36), nullable=False, index=True),
    Column("event", String(16), nullable=False),
    Column("peer", String(64), nullable=False),
    Column("resource", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("size", Integer, nullable=False),
    Column("status", String(200), nullable=False),  # a short text: "1000 rows applied"
    Column("reason", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

peers = Table(
    "peers", metadata,
    Column("node_id", String(64), primary_key=True),
    Column("last_contact", Float, nullable=False),
    Column("last_rtt_ms", Float),
)

# (center) the highest signed exchange-log head each member sent (node/kernel/witness.py)
log_witness = Table(
    "log_witness", metadata,
    Column("node_id", String(64), primary_key=True),
    Column("head_id", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("sig", LargeBinary, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("alerts", Integer, nullable=False),
    Column("last_alert", String(200), nullable=False),
)

# grants (目录授权): the center's ledger, and each holder's and grantee's copy of the
# grants that concern it (node/kernel/grants.py)
grants = Table(
    "grants", metadata,
    Column("id", String(36), primary_key=True),
    Column("resource", String(128), nullable=False),
    Column("grantee", String(64), nullable=False),
    Column("service", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("granted_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("doc", Text, nullable=False),  # the whole grant as JSON (policies.grants)
    Index("ix_grants_who", "resource", "grantee", "service"),
)

# records used per grant and day (daily quotas survive a restart)
grant_use = Table(
    "grant_use", metadata,
    Column("grant_id", String(36), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("records", BigInteger, nullable=False),
    Column("requests", BigInteger, nullable=False),
)

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # SQLite's default 4 KiB pages. 64 KiB pages (tried for large packages) gained
    # nothing there (bench-core: 46.3 vs 46.8 MiB/s) and made every small commit write
    # whole 64 KiB pages to the WAL: a verification round trip took 29 ms instead of 23.
    # Takes effect only when the file is new; an older file keeps its page size.
    cur.execute("PRAGMA page_size=4096")
    cur.execute("PRAGMA journal_mode=WAL")
    # checkpoint every 8 MiB of WAL and cut the file back after
    cur.execute("PRAGMA wal_autocheckpoint=2048")
    cur.execute("PRAGMA journal_size_limit=16777216")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for the state DB, with SQLite tuned for one writer and many readers;
    the exchange log's signed head moves once per transaction."""
    from exnode.node.kernel import exlog

    eng = _make_engine(url)
    exlog.defer_heads(eng)
    return eng


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.exists():
                p.touch(mode=0o600)
        eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(eng, "connect", _sqlite_pragmas)
        # SQLite's own BEGIN is deferred; take the write lock at the start instead so that
        # read-then-write transactions (the log's hash chain) cannot interleave.
        # A reader that asks for a snapshot (execution option ``exnode_snapshot``) takes
        # a deferred BEGIN: WAL gives it one moment's view without holding writers off.
        event.listen(eng, "begin", lambda conn: conn.exec_driver_sql(
            "BEGIN" if conn.get_execution_options().get("exnode_snapshot")
            else "BEGIN IMMEDIATE"))

        @event.listens_for(eng, "connect")
        def _no_autobegin(dbapi_conn, _rec):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None

        return eng
    return create_engine(url, pool_pre_ping=True)


KERNEL_BRANCH = "kernel"


def migrate(engine: Engine, tables: Sequence[StateTables] = ()) -> None:
    """Bring the kernel's schema, and each service's, to its newest revision.

    Each set of tables is a branch of its own in one Alembic history (the kernel's in
    ``migrations/versions``, a service's in the folder it registered), so a service
    brings and upgrades its tables without touching anybody else's revisions."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    locations = [str(MIGRATIONS / "versions")] + [str(t.versions) for t in tables]
    cfg.set_main_option("version_locations", " ".join(locations))
    cfg.set_main_option("path_separator", "space")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")


def installed_tables() -> list[StateTables]:
    """The state tables of every installed plugin (a plugin disabled in one node's
    configuration keeps its tables: its data stays, and its revisions stay known)."""
    from exnode.plugins.manager import Registry, make_manager

    return list(Registry(make_manager()).tables.values())


def open_state(url: str, tables: Sequence[StateTables] | None = None) -> Engine:
    """Open (creating and migrating as needed) the state DB at ``url``: the kernel's tables
    and ``tables`` (default: those of every installed plugin)."""
    if tables is None:
        tables = installed_tables()
    try:
        eng = make_engine(url)
        migrate(eng, tables)
    except CommandError as e:  # e.g. a revision of a plugin that is no longer installed
        raise StateError(f"state DB {_safe_url(url)}: {e} (is a plugin that created "
                         "tables here no longer installed?)") from None
    except SQLAlchemyError as e:
        raise StateError(f"state DB {_safe_url(url)}: {e.__class__.__name__}: "
                         f"{str(e.orig if hasattr(e, 'orig') else e).splitlines()[0]}") from None
    return eng


def _safe_url(url: str) -> str:
    """The URL without a password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<state url>"
