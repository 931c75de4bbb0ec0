"""(state-DB thread) The catalog's versions and its search.

Search looks in the current version of each entry: on SQLite through an FTS5 table with
the trigram tokenizer (a substring match of three characters or more, which is what
Chinese needs: it has no spaces between words), on PostgreSQL through a trigram (pg_trgm)
index on the same text. Terms shorter than three characters (most Chinese words are
two) are matched with LIKE over the same text, which the trigram index cannot serve;
the catalog is small (thousands of entries), so that scan is cheap.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, text

from .tables import catalog_entries as ce

MAX_TERMS = 8
VOLATILE = ("version", "seq", "published_at", "metadata_version")


def entry_hash(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k not in VOLATILE}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False)
                          .encode()).hexdigest()


def search_text(doc: dict[str, Any]) -> str:
    parts = [doc.get("resource"), doc.get("name"), doc.get("abstract"),
             doc.get("provider"), doc.get("classification"), doc.get("resource_id"),
             " ".join(doc.get("keywords") or [])]
    for el in doc.get("elements") or []:
        parts += [el.get("name"), el.get("cn_name"), el.get("description")]
    return " ".join(str(p) for p in parts if p)


def _fts(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite"


def store(conn: Connection, doc: dict[str, Any], seq: int | None = None) -> dict[str, Any] | None:
    """Keep ``doc`` as the resource's new current version if it differs from the
    current one. At the center (``seq`` None) the version and seq are assigned here; a
    member stores them as the center sent them. Returns the stored doc, or None when it
    was the same."""
    rid = doc["resource"]
    h = entry_hash(doc)
    cur = conn.execute(select(ce.c.version, ce.c.hash).where(
        ce.c.resource == rid, ce.c.current.is_(True))).first()
    if seq is None:
        if cur is not None and cur.hash == h:
            return None
        version = (cur.version if cur else 0) + 1
        seq = int(conn.execute(select(func.coalesce(func.max(ce.c.seq), 0))).scalar()) + 1
        doc = {**doc, "version": version, "metadata_version": version, "seq": seq,
               "published_at": time.time()}
    else:
        version = int(doc["version"])
        if conn.execute(select(ce.c.version).where(ce.c.resource == rid,
                                                   ce.c.version == version)).first():
            return None  # had it already
        if cur is not None and cur.version > version:  # an older one, late: keep as history
            conn.execute(ce.insert().values(
                resource=rid, version=version, seq=seq, provider_node=doc["provider_node"],
                current=False, hash=h, published_at=float(doc.get("published_at") or 0),
                doc=json.dumps(doc, ensure_ascii=False), search_text=search_text(doc)))
            return None
    conn.execute(ce.update().where(ce.c.resource == rid).values(current=False))
    st = search_text(doc)
    conn.execute(ce.insert().values(
        resource=rid, version=version, seq=seq, provider_node=doc["provider_node"],
        current=True, hash=h, published_at=float(doc.get("published_at") or time.time()),
        doc=json.dumps(doc, ensure_ascii=False), search_text=st))
    if _fts(conn):
        conn.execute(text("DELETE FROM catalog_fts WHERE resource = :r"), {"r": rid})
        conn.execute(text("INSERT INTO catalog_fts (resource, text) VALUES (:r, :t)"),
                     {"r": rid, "t": st})
    return doc


def current(conn: Connection) -> dict[str, dict[str, Any]]:
    return {r: json.loads(d) for r, d in conn.execute(
        select(ce.c.resource, ce.c.doc).where(ce.c.current.is_(True))
        .order_by(ce.c.resource))}


def version(conn: Connection, rid: str, v: int | None) -> dict[str, Any] | None:
    q = select(ce.c.doc).where(ce.c.resource == rid)
    q = q.where(ce.c.version == v) if v is not None else q.where(ce.c.current.is_(True))
    d = conn.execute(q).scalar()
    return json.loads(d) if d else None


def versions(conn: Connection, rid: str) -> list[dict[str, Any]]:
    return [{"version": v, "published_at": t, "hash": h} for v, t, h in conn.execute(
        select(ce.c.version, ce.c.published_at, ce.c.hash).where(ce.c.resource == rid)
        .order_by(ce.c.version))]


def after(conn: Connection, seq: int, limit: int) -> list[dict[str, Any]]:
    """Every version published after ``seq`` (for a member that was away), oldest first."""
    return [json.loads(d) for d in conn.execute(
        select(ce.c.doc).where(ce.c.seq > seq).order_by(ce.c.seq).limit(limit)).scalars()]


def last_seq(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(ce.c.seq), 0))).scalar())


def _like(term: str) -> str:
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search(conn: Connection, query: str, limit: int = 100) -> list[dict[str, Any]]:
    """Current entries whose text holds every term of ``query`` (case-insensitive)."""
    terms = [t for t in query.split() if t][:MAX_TERMS]
    if not terms:
        return []
    long = [t for t in terms if len(t) >= 3]
    short = [t for t in terms if len(t) < 3]
    q = select(ce.c.doc).where(ce.c.current.is_(True))
    if long and _fts(conn):
        match = " AND ".join('"' + t.replace('"', '""') + '"' for t in long)
        hits = select(text("resource")).select_from(text("catalog_fts")).where(
            text("catalog_fts MATCH :m").bindparams(m=match))
        q = q.where(ce.c.resource.in_(hits))
    else:
        short = terms
    if short:
        q = q.where(and_(*[or_(ce.c.search_text.ilike(_like(t), escape="\\"))
                           for t in short]))
    return [json.loads(d) for d in conn.execute(q.order_by(ce.c.resource).limit(limit))
            .scalars()]
