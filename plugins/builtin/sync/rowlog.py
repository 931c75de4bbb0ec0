"""The exchange-log entry of each ``rows`` package: how many rows it carries.

The kernel logs a package's bytes (events ``created``, ``applied``); sync adds one entry
per ``rows`` package, in the same transaction, with its rows (inserts, updates and
deletes together) in ``size``:

- event ``sync``, kind ``rows``, status ``"N rows sent"``, peer = the destination: a
  package this node issued (captured, initial load or repair, a quarantined row sent
  again, and at the center each package forwarded to a subscriber, when it is queued,
  so a forward held for a non-member counts when it goes out);
- event ``sync``, kind ``rows``, status ``"N rows applied"`` (or ``"N rows received, M
  applied"`` when some were refused, queued as conflicts or set aside; the reason then
  says how many of each), peer = the source: a package received and applied here.

Counts only: never a key or a value (they may be personal data). The monthly ledger's
rows in/out are SUM(size) of these entries (status ending in ``applied`` / ``rows
sent``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from exnode.node.kernel.api import ServiceAPI

from .resources import ROWS

EVENT = "sync"
SENT_SUFFIX = " rows sent"       # status of a package sent: "N rows sent"
APPLIED_SUFFIX = " applied"      # status of one applied: "N rows applied" / "..., M applied"


def sent_entry(pkg_id: str, dest: str, rid: str, rows: int) -> dict[str, Any]:
    """The log entry of a ``rows`` package of ``rows`` rows queued for ``dest``."""
    return {"pkg_id": pkg_id, "event": EVENT, "peer": dest, "resource": rid, "kind": ROWS,
            "size": rows, "status": f"{rows}{SENT_SUFFIX}"}


def applied_entry(pkg_id: str, src: str, rid: str, rows: int, applied: int,
                  refused: int = 0, conflicts: int = 0) -> dict[str, Any]:
    """The log entry of a ``rows`` package of ``rows`` rows from ``src`` applied here,
    ``applied`` of them written to this node's copy; ``refused`` were refused (conflict
    policy or rules), ``conflicts`` wait for an operator, the rest were set aside."""
    if applied == rows:
        return {"pkg_id": pkg_id, "event": EVENT, "peer": src, "resource": rid, "kind": ROWS,
                "size": rows, "status": f"{rows} rows{APPLIED_SUFFIX}"}
    aside = max(0, rows - applied - refused - conflicts)
    why = ", ".join(f"{n} {what}" for n, what in ((refused, "refused"),
                                                  (conflicts, "queued as conflicts"),
                                                  (aside, "set aside")) if n)
    return {"pkg_id": pkg_id, "event": EVENT, "peer": src, "resource": rid, "kind": ROWS,
            "size": rows, "status": f"{rows} rows received, {applied}{APPLIED_SUFFIX}",
            "reason": why}


def send_rows(api: ServiceAPI, conn: Connection, dest: str, rid: str, data: bytes,
              rows: int, extra: dict[str, Any] | None = None) -> str:
    """Queue a ``rows`` package (``data``, an encoded batch of ``rows`` changes) for
    ``dest`` and log its rows, in ``conn``'s transaction; returns its id."""
    pkg_id = api.enqueue(conn, dest, ROWS, rid, data, extra=extra)
    api.log(conn, [sent_entry(pkg_id, dest, rid, rows)])
    return pkg_id
