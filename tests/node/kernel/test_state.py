"""The state DB: created and upgraded only by the Alembic migrations, which must match
the SQLAlchemy tables exactly, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, inspect, select, text

from exnode.node.base.errors import StateError
from exnode.node.kernel.state import MIGRATIONS, installed_tables, meta, open_state
from exnode.node.kernel.state import metadata as kernel_metadata


def all_metadata() -> MetaData:
    """The kernel's tables and every installed service's, in one MetaData."""
    m = MetaData()
    for t in kernel_metadata.tables.values():
        t.to_metadata(m)
    for st in installed_tables():
        for t in st.metadata.tables.values():
            t.to_metadata(m)
    return m


metadata = all_metadata()


def head_revisions() -> list[str]:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    locations = [str(MIGRATIONS / "versions")] + [str(t.versions) for t in installed_tables()]
    cfg.set_main_option("version_locations", " ".join(locations))
    cfg.set_main_option("path_separator", "space")
    heads = ScriptDirectory.from_config(cfg).get_heads()
    assert len(heads) == 1 + len(installed_tables())  # one branch per set of tables
    return sorted(heads)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def eng(url) -> Iterator[Engine]:
    e = open_state(url)
    yield e
    e.dispose()


def tables(e: Engine) -> set[str]:
    with e.connect() as conn:
        return set(inspect(conn).get_table_names())


def version(e: Engine) -> list[str]:
    with e.connect() as conn:
        return sorted(r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version")))


def test_fresh_database_has_every_table(eng):
    # SQLite's full-text index of the catalog is a virtual table with shadow tables
    have = {t for t in tables(eng) if not t.startswith("catalog_fts")}
    assert have == set(metadata.tables) | {"alembic_version"}
    assert version(eng) == head_revisions()
    expected = {"meta", "members", "invites", "outbox", "seq_out", "inbox", "seq_in",
                "received", "exchange_log", "peers"}
    assert expected <= set(metadata.tables)
    # the kernel's own tables are only the kernel's: services bring theirs
    assert "received" not in kernel_metadata.tables
    assert "freshness" not in kernel_metadata.tables


LATER_TABLES = ["grants", "grant_use", "catalog_entries", "access_requests", "corrections",
                "monitor_alerts", "console_accounts", "console_sessions", "console_audit"]
# made by a migration on one database only (PostgreSQL's trigram index for search)
DIALECT_ONLY_INDEXES = {"ix_catalog_trgm"}


def test_state_db_from_before_the_service_branches_upgrades_in_place(url):
    """A state DB made when every table was in the kernel's one chain (at revision 0004)
    gets the service branches stamped on without losing rows."""
    from sqlalchemy import create_engine

    e = create_engine(url)
    metadata.create_all(e)
    with e.begin() as conn:
        conn.execute(text("ALTER TABLE inbox DROP COLUMN expires"))  # came with 0005
        conn.execute(text("DROP TABLE log_witness"))  # came with 0006
        conn.execute(text("DROP TABLE held_forwards"))  # came with sync's s0002
        for later in LATER_TABLES:  # came after 0004 (0007, the sharing services)
            conn.execute(text(f"DROP TABLE {later}"))
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0004')"))
        conn.execute(text("INSERT INTO freshness (resource, node, last_current, last_rows) "
                          "VALUES ('people', 'b1', 1.0, 0)"))
        conn.execute(text("INSERT INTO received (pkg_id, src, resource, seq, item, "
                          "received_at, payload) VALUES ('p', 'b1', 'r', 1, 0, 1.0, 'x')"))
    e.dispose()
    e = open_state(url)
    try:
        assert version(e) == head_revisions()
        with e.connect() as conn:
            assert conn.execute(text("SELECT node FROM freshness")).scalar() == "b1"
            assert conn.execute(text("SELECT src FROM received")).scalar() == "b1"
    finally:
        e.dispose()


def test_every_column_and_index_is_there(eng):
    with eng.connect() as conn:
        insp = inspect(conn)
        for name, table in metadata.tables.items():
            cols = {c["name"]: c for c in insp.get_columns(name)}
            assert set(cols) == {c.name for c in table.columns}, name
            for c in table.columns:
                assert cols[c.name]["nullable"] == c.nullable, f"{name}.{c.name}"
            pk = insp.get_pk_constraint(name)["constrained_columns"]
            assert pk == [c.name for c in table.primary_key.columns], name
            have = {(i["name"], tuple(i["column_names"])) for i in insp.get_indexes(name)
                    if i["name"] not in DIALECT_ONLY_INDEXES
                    and not i.get("duplicates_constraint")}  # a unique constraint's own
            want = {(i.name, tuple(c.name for c in i.columns)) for i in table.indexes}
            assert have == want, name


def test_opening_twice_is_idempotent(url):
    e = open_state(url)
    with e.begin() as conn:
        conn.execute(meta.insert().values(key="probe", value=b"kept"))
    e.dispose()
    e = open_state(url)
    try:
        have = {t for t in tables(e) if not t.startswith("catalog_fts")}
        assert have == set(metadata.tables) | {"alembic_version"}
        assert version(e) == head_revisions()
        with e.connect() as conn:
            assert conn.execute(select(meta.c.value).where(meta.c.key == "probe")).scalar() \
                == b"kept"
    finally:
        e.dispose()


def test_migrations_match_the_tables(eng):
    with eng.connect() as conn:
        mc = MigrationContext.configure(conn, opts={"compare_type": True,
                                                    "compare_server_default": True})
        diff = compare_metadata(mc, metadata)
    # what a migration makes on one database only: SQLite's full-text tables of the
    # catalog, PostgreSQL's trigram index
    diff = [d for d in diff if not (
        (d[0] == "remove_table" and d[1].name.startswith("catalog_fts"))
        or (d[0] == "remove_index" and d[1].name in DIALECT_ONLY_INDEXES))]
    assert diff == []


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_sqlite_file_is_private(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = tmp_path / "sub" / "state.db"
        e = open_state(f"sqlite:///{path}")
        try:
            with e.begin() as conn:  # a write, so that the WAL and shared-memory files exist
                conn.execute(meta.insert().values(key="x", value=b"y"))
            with e.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                files = [p for p in path.parent.iterdir() if p.name.startswith("state.db")]
                assert path in files
                for p in files:
                    assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        finally:
            e.dispose()
    finally:
        os.umask(old)


def test_unreachable_postgres_is_a_one_line_state_error():
    with pytest.raises(StateError) as ei:
        open_state("postgresql+psycopg://exnode:s3cret-pw@127.0.0.1:1/exnode")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "s3cret-pw" not in msg
    assert "127.0.0.1:1" in msg


def test_unusable_sqlite_path_is_a_state_error(tmp_path):
    (tmp_path / "state.db").mkdir()
    with pytest.raises(StateError) as ei:
        open_state(f"sqlite:///{tmp_path / 'state.db'}")
    assert "\n" not in str(ei.value)


def test_the_sqlite_wal_stays_small(tmp_path):
    """With 64 KiB pages the default checkpoint let state.db-wal grow to about 64 MB per
    node and stay there (issue 9, finding 7): it is checkpointed every 8 MiB and cut
    back to at most 16 MiB."""
    from sqlalchemy import Column, LargeBinary, Table

    eng = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    md = MetaData()
    t = Table("blobs", md, Column("b", LargeBinary))
    md.create_all(eng)
    wal = tmp_path / "state.db-wal"
    biggest = 0
    for _ in range(40):  # 40 MiB, in 1 MiB transactions
        with eng.begin() as c:
            c.execute(t.insert(), [{"b": os.urandom(64 << 10)} for _ in range(16)])
        biggest = max(biggest, wal.stat().st_size if wal.exists() else 0)
    eng.dispose()
    assert biggest <= 20 << 20, f"WAL reached {biggest >> 20} MiB"
