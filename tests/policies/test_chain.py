"""Hash chains (the exchange log's, and the audit trail's to come)."""

from __future__ import annotations

import hashlib

import cbor2

from exnode.node.kernel import exlog
from exnode.policies import chain


def _entries(n: int) -> list[tuple[list, str, str]]:
    out, prev = [], chain.GENESIS
    for i in range(n):
        values = [i, f"entry {i}", "审计"]
        h = chain.link(values, prev)
        out.append((values, prev, h))
        prev = h
    return out


def test_link_is_sha256_of_the_cbor_of_the_values_and_the_previous_hash():
    assert chain.link([1, "a"], chain.GENESIS) == hashlib.sha256(
        cbor2.dumps([1, "a", chain.GENESIS])).hexdigest()


def test_the_exchange_logs_row_hash_is_unchanged():
    # a row hashed as the log has always hashed it: logs written before stay valid
    fields = {"pkg_id": "p1", "event": "sent", "peer": "b1", "resource": "r", "kind": "data",
              "size": 10, "status": "ok", "reason": ""}
    body = cbor2.dumps([7, "1764547200.123456", "p1", "sent", "b1", "r", "data", 10, "ok", "",
                        chain.GENESIS])
    assert exlog.row_hash(7, 1764547200.123456, fields, chain.GENESIS) == \
        hashlib.sha256(body).hexdigest()


def test_an_intact_chain_holds():
    assert chain.first_break(_entries(5)) is None
    assert chain.first_break([]) is None


def test_an_edited_entry_breaks_at_itself():
    es = _entries(5)
    es[2] = ([2, "entry 2 edited", "审计"], es[2][1], es[2][2])
    assert chain.first_break(es) == 2


def test_a_deleted_entry_breaks_at_the_next():
    es = _entries(5)
    del es[1]
    assert chain.first_break(es) == 1


def test_an_entry_rehashed_after_editing_breaks_at_the_one_after_it():
    es = _entries(5)
    values = [2, "forged", "审计"]
    es[2] = (values, es[2][1], chain.link(values, es[2][1]))
    assert chain.first_break(es) == 3
