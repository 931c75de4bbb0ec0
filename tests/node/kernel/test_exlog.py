"""The exchange log's hash chain and signed head, on SQLite and on PostgreSQL: every
edited, deleted or cut-off row is found and named."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import Engine, delete, func, select, update

from exnode.node.kernel import exlog
from exnode.node.kernel.state import exchange_log, meta, open_state

KEY = ed25519.Ed25519PrivateKey.generate()
OTHER = ed25519.Ed25519PrivateKey.generate()


def checker(key: ed25519.Ed25519PrivateKey) -> Callable[[bytes, bytes], bool]:
    pub = key.public_key()

    def check(sig: bytes, body: bytes) -> bool:
        try:
            pub.verify(sig, body)
            return True
        except Exception:
            return False

    return check


@pytest.fixture(params=["sqlite", "postgresql"])
def eng(request, tmp_path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    e = open_state(url)
    yield e
    e.dispose()


def entry(n: int) -> dict:
    return {"pkg_id": f"pkg-{n:04d}", "event": "sent", "peer": f"b{n % 3}",
            "resource": "res.a", "kind": "data", "size": 100 + n, "status": "ok",
            "reason": ""}


def append(eng: Engine, entries: list[dict], key=KEY) -> None:
    with eng.begin() as conn:
        exlog.append(conn, entries, key.sign)


def fill(eng: Engine, n: int = 10) -> None:
    # several transactions of different sizes
    i = 0
    for size in (1, 3, 2, 4, 1, 5, 2):
        if i >= n:
            break
        append(eng, [entry(j) for j in range(i + 1, min(n, i + size) + 1)])
        i += size


def verify(eng: Engine, key=KEY) -> exlog.VerifyResult:
    with eng.connect() as conn:
        return exlog.verify(conn, checker(key))


def execute(eng: Engine, stmt) -> None:
    with eng.begin() as conn:
        conn.execute(stmt)


def rows(eng: Engine) -> list[dict]:
    with eng.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(exchange_log).order_by(exchange_log.c.id)).mappings()]


# --- intact logs -------------------------------------------------------------------------

def test_empty_log_verifies(eng):
    res = verify(eng)
    assert res.ok and res.rows == 0


def test_append_then_verify(eng):
    fill(eng, 10)
    res = verify(eng)
    assert res.ok, res.problem
    assert res.rows == 10
    rs = rows(eng)
    assert [r["id"] for r in rs] == list(range(1, 11))
    assert rs[0]["prev_hash"] == exlog.GENESIS
    assert all(rs[i]["prev_hash"] == rs[i - 1]["hash"] for i in range(1, 10))
    assert rs[4]["pkg_id"] == "pkg-0005" and rs[4]["size"] == 105
    assert len({r["hash"] for r in rs}) == 10


def test_defaults_for_missing_fields(eng):
    append(eng, [{"event": "enrol"}])
    r = rows(eng)[0]
    assert (r["pkg_id"], r["peer"], r["size"], r["status"], r["reason"]) == ("", "", 0, "ok", "")
    assert verify(eng).ok


def test_appending_nothing_changes_nothing(eng):
    append(eng, [])
    assert rows(eng) == []
    assert verify(eng).ok


def test_log_survives_reopening(eng):
    fill(eng, 6)
    url = eng.url.render_as_string(hide_password=False)
    again = open_state(url)
    try:
        append(again, [entry(7)])
        res = verify(again)
        assert res.ok and res.rows == 7, res.problem
    finally:
        again.dispose()


def test_many_appends_in_separate_transactions(eng):
    for n in range(1, 151):
        append(eng, [entry(n)])
    res = verify(eng)
    assert res.ok and res.rows == 150, res.problem


def test_concurrent_appends_keep_the_chain(eng):
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for n in range(20):
                append(eng, [entry(w * 100 + n), entry(w * 100 + n + 50)])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    res = verify(eng)
    assert res.ok and res.rows == 4 * 20 * 2, res.problem
    assert [r["id"] for r in rows(eng)] == list(range(1, 161))


# --- tampering ----------------------------------------------------------------------------

EDITS = {"status": "refused", "reason": "nothing to see", "peer": "b9", "size": 1,
         "pkg_id": "pkg-9999", "event": "applied", "ts": 1.0, "resource": "res.b",
         "kind": "ping", "prev_hash": "0" * 64}


def test_edited_row_is_named(eng):
    fill(eng, 10)
    original = rows(eng)[3]
    for field, value in EDITS.items():
        execute(eng, update(exchange_log).where(exchange_log.c.id == 4).values({field: value}))
        res = verify(eng)
        assert not res.ok, field
        assert res.bad_row == 4, (field, res)
        assert "row 4" in res.problem, (field, res)
        # put it back: the chain is whole again
        execute(eng, update(exchange_log).where(exchange_log.c.id == 4)
                .values({field: original[field]}))
        assert verify(eng).ok, field


def test_edited_hash_is_named(eng):
    fill(eng, 10)
    execute(eng, update(exchange_log).where(exchange_log.c.id == 6).values(hash="f" * 64))
    res = verify(eng)
    assert not res.ok and res.bad_row == 6


def test_edited_row_with_recomputed_hash_is_found_at_the_next_row(eng):
    fill(eng, 10)
    r = rows(eng)[4]
    r["status"] = "refused"
    new = exlog.row_hash(r["id"], r["ts"], r, r["prev_hash"])
    execute(eng, update(exchange_log).where(exchange_log.c.id == 5)
            .values(status="refused", hash=new))
    res = verify(eng)
    assert not res.ok and res.bad_row == 6
    assert "row 6" in res.problem


def test_deleted_middle_row_is_named(eng):
    fill(eng, 10)
    execute(eng, delete(exchange_log).where(exchange_log.c.id == 5))
    res = verify(eng)
    assert not res.ok
    assert res.bad_row == 5
    assert "row 5" in res.problem and "missing" in res.problem
    execute(eng, delete(exchange_log).where(exchange_log.c.id == 1))
    res = verify(eng)
    assert not res.ok and res.bad_row == 1 and "row 1 " in res.problem


def test_rows_cut_off_the_end_are_detected(eng):
    fill(eng, 10)
    for last in (9, 7):
        execute(eng, delete(exchange_log).where(exchange_log.c.id > last))
        res = verify(eng)
        assert not res.ok
        assert "cut off" in res.problem
        assert "row 10" in res.problem and f"row {last}" in res.problem


def test_all_rows_deleted_is_detected(eng):
    fill(eng, 5)
    execute(eng, delete(exchange_log))
    res = verify(eng)
    assert not res.ok
    assert "row 5" in res.problem


def test_head_signed_by_another_key_fails(eng):
    fill(eng, 4)
    append(eng, [entry(5)], key=OTHER)
    res = verify(eng)
    assert not res.ok
    assert res.bad_row == 5
    assert "signature" in res.problem
    assert verify(eng, key=OTHER).ok


def test_truncated_log_with_a_forged_head_fails(eng):
    # Cut rows off and move the head back: without the node's key its signature fails.
    fill(eng, 10)
    execute(eng, delete(exchange_log).where(exchange_log.c.id > 7))
    last = rows(eng)[-1]
    body = exlog._head_body(7, last["hash"])
    head = cbor2.dumps({"id": 7, "hash": last["hash"], "sig": OTHER.sign(body)})
    execute(eng, update(meta).where(meta.c.key == exlog.HEAD_KEY).values(value=head))
    res = verify(eng)
    assert not res.ok and "signature" in res.problem
    # the same head signed with the node's key would pass: the key is what protects it
    head = cbor2.dumps({"id": 7, "hash": last["hash"], "sig": KEY.sign(body)})
    execute(eng, update(meta).where(meta.c.key == exlog.HEAD_KEY).values(value=head))
    assert verify(eng).ok


def test_deleted_head_is_detected(eng):
    fill(eng, 3)
    execute(eng, delete(meta).where(meta.c.key == exlog.HEAD_KEY))
    res = verify(eng)
    assert not res.ok and "head" in res.problem


def test_appending_after_a_deletion_does_not_hide_it(eng):
    fill(eng, 6)
    execute(eng, delete(exchange_log).where(exchange_log.c.id == 6))
    append(eng, [entry(7), entry(8)])
    res = verify(eng)
    assert not res.ok and res.bad_row == 6
    with eng.connect() as conn:
        assert conn.execute(select(func.max(exchange_log.c.id))).scalar() == 8


# --- anchors: copies of the head kept elsewhere (head file, the center's witness) ---------

def head_meta(eng: Engine) -> bytes:
    with eng.connect() as conn:
        return conn.execute(select(meta.c.value).where(meta.c.key == exlog.HEAD_KEY)).scalar()


def anchor(eng: Engine, source: str = "the head file") -> exlog.Anchor:
    with eng.connect() as conn:
        h = exlog.read_head(conn)
    assert h is not None
    return exlog.Anchor(source, h.id, h.hash)


def test_cut_tail_with_the_old_head_restored_passes_alone_but_not_against_an_anchor(eng):
    fill(eng, 6)
    old = head_meta(eng)
    append(eng, [entry(7), entry(8), entry(9)])
    later = anchor(eng)
    # The attack: cut rows 7-9 and put the (genuinely signed) head of row 6 back.
    execute(eng, delete(exchange_log).where(exchange_log.c.id > 6))
    execute(eng, update(meta).where(meta.c.key == exlog.HEAD_KEY).values(value=old))
    assert verify(eng).ok  # chain and signature alone cannot see it
    with eng.connect() as conn:
        res = exlog.verify(conn, checker(KEY), anchors=[later])
    assert not res.ok
    assert "the head file holds a head at row 9" in res.problem
    assert "ends at row 6" in res.problem


def test_whole_log_and_head_deleted_fails_against_an_anchor(eng):
    fill(eng, 4)
    a = anchor(eng, "the center's witness (center)")
    execute(eng, delete(exchange_log))
    execute(eng, delete(meta).where(meta.c.key == exlog.HEAD_KEY))
    assert verify(eng).ok  # an empty log with no head looks like a new node
    with eng.connect() as conn:
        res = exlog.verify(conn, checker(KEY), anchors=[a])
    assert not res.ok and "center's witness" in res.problem and "row 0" in res.problem


def test_log_rewritten_from_before_the_anchor_is_named_at_the_anchor_row(eng):
    fill(eng, 5)
    a = anchor(eng)
    # roll back to row 3 and log other rows: the chain is intact and longer than before
    execute(eng, delete(exchange_log).where(exchange_log.c.id > 3))
    with eng.connect() as conn:
        last = conn.execute(select(exchange_log).where(exchange_log.c.id == 3)).mappings().one()
    head = cbor2.dumps({"id": 3, "hash": last["hash"],
                        "sig": KEY.sign(exlog._head_body(3, last["hash"]))})
    execute(eng, update(meta).where(meta.c.key == exlog.HEAD_KEY).values(value=head))
    append(eng, [entry(40), entry(41), entry(42), entry(43)])
    assert verify(eng).ok
    with eng.connect() as conn:
        res = exlog.verify(conn, checker(KEY), anchors=[a])
    assert not res.ok and res.bad_row == 5 and "rewritten" in res.problem


def test_an_anchor_at_or_behind_the_head_of_an_intact_log_passes(eng):
    fill(eng, 3)
    a = anchor(eng)
    append(eng, [entry(4)])
    with eng.connect() as conn:
        assert exlog.verify(conn, checker(KEY), anchors=[a, anchor(eng, "x")]).ok


# --- the head moves once per transaction, savepoints followed ---------------------------

def head_id(eng: Engine) -> int:
    with eng.connect() as conn:
        h = exlog.read_head(conn)
    return h.id if h is not None else 0


def test_several_appends_in_one_transaction_sign_the_head_once(eng):
    signed: list[bytes] = []

    def sign(body: bytes) -> bytes:
        signed.append(body)
        return KEY.sign(body)

    with eng.begin() as conn:
        for i in range(1, 6):
            exlog.append(conn, [entry(i)], sign)
    assert len(signed) == 1 and signed[0].startswith(b"exnode-log-head:5:")
    assert verify(eng).ok and head_id(eng) == 5


def test_a_savepoint_rolled_back_takes_the_head_back(eng):
    fill(eng, 3)
    with eng.begin() as conn:
        exlog.append(conn, [entry(4)], KEY.sign)
        try:
            with conn.begin_nested():
                exlog.append(conn, [entry(5), entry(6)], KEY.sign)
                raise RuntimeError("the package's handler failed")
        except RuntimeError:
            pass
        with conn.begin_nested():
            exlog.append(conn, [entry(7)], KEY.sign)
        exlog.append(conn, [entry(8)], KEY.sign)
    assert [r["pkg_id"] for r in rows(eng)][3:] == ["pkg-0004", "pkg-0007", "pkg-0008"]
    res = verify(eng)
    assert res.ok, res.problem
    assert head_id(eng) == 6


def test_a_first_append_inside_a_rolled_back_savepoint_leaves_no_trace(eng):
    fill(eng, 2)
    with eng.begin() as conn:
        try:
            with conn.begin_nested():
                with conn.begin_nested():
                    exlog.append(conn, [entry(3)], KEY.sign)
                exlog.append(conn, [entry(4)], KEY.sign)
                raise RuntimeError
        except RuntimeError:
            pass
        exlog.append(conn, [entry(5)], KEY.sign)
    assert [r["id"] for r in rows(eng)] == [1, 2, 3]
    assert rows(eng)[2]["pkg_id"] == "pkg-0005"
    assert verify(eng).ok and head_id(eng) == 3


def test_a_rolled_back_transaction_moves_nothing_and_the_next_one_chains_on(eng):
    fill(eng, 2)
    try:
        with eng.begin() as conn:
            exlog.append(conn, [entry(3), entry(4)], KEY.sign)
            raise RuntimeError
    except RuntimeError:
        pass
    append(eng, [entry(5)])
    assert [r["id"] for r in rows(eng)] == [1, 2, 3]
    assert verify(eng).ok and head_id(eng) == 3


def test_an_engine_without_deferred_heads_writes_the_head_at_each_append(tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'state.db'}"
    open_state(url).dispose()
    plain = sa.create_engine(url)
    with plain.begin() as conn:
        exlog.append(conn, [entry(1)], KEY.sign)
        assert exlog.read_head(conn).id == 1  # already written, before the commit
    assert verify(plain).ok
    plain.dispose()


def test_a_snapshot_sees_rows_and_head_of_one_moment_while_the_log_grows(eng):
    """``exnode log verify`` on a running node: a transaction that commits between the
    read of the rows and the read of the head must not make an intact log look cut."""
    import sqlalchemy as sa

    fill(eng, 5)
    writer = sa.create_engine(eng.url)
    fired = []

    def before(_conn, _cur, statement, *_a):  # type: ignore[no-untyped-def]
        if "FROM meta" in statement and not fired:
            fired.append(1)
            with writer.begin() as wc:  # the daemon appends meanwhile
                exlog.append(wc, [entry(6)], KEY.sign)

    sa.event.listen(eng, "before_cursor_execute", before)
    try:
        with exlog.snapshot(eng) as conn:
            res = exlog.verify(conn, checker(KEY))
    finally:
        sa.event.remove(eng, "before_cursor_execute", before)
        writer.dispose()
    assert fired and res.ok, res.problem
    assert res.rows in (5, 6)
    assert verify(eng).ok


def test_listing_trace_and_stats_read_what_was_logged(eng):
    """What `exnode log`, `log show` and the console's statistics read: filters, a
    package's trace, and packages, bytes and rows per resource, peer and day."""
    import time

    def e(pkg, event, peer, res, size, status="ok"):
        return {"pkg_id": pkg, "event": event, "peer": peer, "resource": res, "kind": "rows",
                "size": size, "status": status, "reason": ""}

    append(eng, [e("p1", "created", "center", "people", 1000), e("p1", "sent", "center",
                                                                 "people", 1000),
                 e("p1", "sync", "center", "people", 7, "7 rows sent"),
                 e("p2", "applied", "b2", "licences", 500),
                 e("p3", "relayed", "b1>b2", "people", 300),
                 e("", "audit", "admin", "", 0)])
    with eng.connect() as conn:
        assert [r["pkg_id"] for r in exlog.listing(conn, peer="b2")] == ["p2", "p3"]
        assert [r["event"] for r in exlog.listing(conn, events=["sent", "applied"])] == \
            ["sent", "applied"]
        assert len(exlog.listing(conn, limit=2)) == 2
        assert "hash" not in exlog.listing(conn)[0]
        t = exlog.trace(conn, "p1")
        assert t is not None and [r["event"] for r in t["trace"]] == ["created", "sent", "sync"]
        assert exlog.trace(conn, "nope") is None
        s = exlog.stats(conn, time.time() - 3600)
    by_res = {r["key"]: r for r in s["by_resource"]}
    assert by_res["people"] == {"key": "people", "packages": 2, "bytes": 1300, "rows": 7}
    assert by_res["licences"] == {"key": "licences", "packages": 1, "bytes": 500, "rows": 0}
    assert {r["key"] for r in s["by_peer"]} == {"center", "b2", "b1>b2"}
    assert len(s["by_day"]) == 1 and s["by_day"][0]["packages"] == 3
    assert s["by_day"][0]["rows"] == 7


def test_a_status_of_up_to_200_characters_is_kept(eng):
    """Services log short texts as the status ("1000 rows applied", "20000 rows
    received"); a PostgreSQL state DB refused anything over 16 characters."""
    texts = ["1000 rows applied", "20000 rows received, 19999 applied", "s" * 200]
    append(eng, [{**entry(i), "status": t} for i, t in enumerate(texts)])
    with eng.connect() as conn:
        got = [r["status"] for r in exlog.listing(conn)]
        assert got == texts
        assert exlog.verify(conn, checker(KEY)).ok
