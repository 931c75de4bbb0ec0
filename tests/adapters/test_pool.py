"""Business-database engines: a connection the database dropped while it sat idle in
the pool is replaced before use; one in steady use is not pinged on every checkout."""

from __future__ import annotations

import sqlalchemy as sa

from exnode.adapters.pool import data_engine


def _pid(eng: sa.Engine) -> int:
    with eng.connect() as c:
        return int(c.exec_driver_sql("SELECT pg_backend_pid()").scalar())


def _pings(eng: sa.Engine) -> list[int]:
    """Count the dialect's pings (what pool_pre_ping and data_engine both call)."""
    n = [0]
    real = eng.dialect.do_ping

    def counted(dbapi_conn):  # type: ignore[no-untyped-def]
        n[0] += 1
        return real(dbapi_conn)

    eng.dialect.do_ping = counted  # type: ignore[method-assign]
    return n


def _kill(pg_url: str, pid: int) -> None:
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        assert c.exec_driver_sql(f"SELECT pg_terminate_backend({pid})").scalar()
    admin.dispose()


def test_a_connection_dropped_while_idle_is_replaced(pg_url):
    eng = data_engine(pg_url, ping_idle_s=0.0)
    pings = _pings(eng)
    first = _pid(eng)
    _kill(pg_url, first)
    second = _pid(eng)  # no error: the dead one was pinged and thrown away
    assert second != first and pings[0] == 1
    eng.dispose()


def test_a_connection_in_steady_use_is_not_pinged(pg_url):
    eng = data_engine(pg_url, ping_idle_s=60.0)
    _pid(eng)
    pings = _pings(eng)
    pids = {_pid(eng) for _ in range(5)}
    assert len(pids) == 1
    assert pings[0] == 0  # SQLAlchemy's pool_pre_ping would ping at each checkout
    eng.dispose()
