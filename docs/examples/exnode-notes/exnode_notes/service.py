"""The notice board's per-node service: package kinds, control routes, status, startup.

A bureau posts a notice: ``POST /notes`` writes it to the ``notes`` table and queues a
``note`` package to the center, in one transaction. The center files the notice on its
board and answers with a ``note-filed`` package that carries the notice's number. The
bureau writes the number next to its copy. The center may post too: its own notices go
straight onto the board.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog
from sqlalchemy import Connection, delete, func, select

from exnode.node.base.errors import PackageError, UsageError
from exnode.node.kernel.api import (
    ApplyContext,
    ControlRequest,
    KindSpec,
    Router,
    ServiceAPI,
    StatusBuilder,
)
from exnode.plugins import hookimpl

from .tables import notes

NOTE, FILED = "note", "note-filed"  # the package kinds
RESOURCE = "notes"  # the resource every notes package names
MAX_TITLE, MAX_TEXT = 120, 2000  # characters
KEEP_S = 365 * 86400  # the center keeps a notice on its board for a year

log = structlog.get_logger("exnode.notes")


def check_note(title: Any, text: Any) -> tuple[str, str]:
    """A notice's title and text, trimmed; ValueError if they are not acceptable."""
    if not isinstance(title, str) or not isinstance(text, str):
        raise ValueError("title and text must be strings")
    title, text = title.strip(), text.strip()
    if not 0 < len(title) <= MAX_TITLE:
        raise ValueError(f"a title has 1 to {MAX_TITLE} characters")
    if len(text) > MAX_TEXT:
        raise ValueError(f"a text has at most {MAX_TEXT} characters")
    return title, text


def read_json(payload: bytes) -> dict[str, Any]:
    """A package payload that must be a JSON object; ValueError otherwise."""
    try:
        data = json.loads(payload)
    except ValueError:
        raise ValueError("the payload is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the payload is not a JSON object")
    return data


class NotesService:
    """One per node (see ``exnode_services``): the kernel registers it as a plugin."""

    def __init__(self, api: ServiceAPI) -> None:
        self.api = api

    # --- package kinds ------------------------------------------------------------------

    @hookimpl
    def exnode_package_kinds(self, register: Any) -> None:
        register(KindSpec(NOTE, self._on_note, senders="bureau", recipients="center",
                          relay=False))
        register(KindSpec(FILED, self._on_filed, senders="center", recipients="bureau",
                          relay=False))

    def _on_note(self, ctx: ApplyContext) -> None:
        """(center, state-DB thread) A bureau's notice: file it, answer with its number."""
        if not self.api.is_center:
            raise PackageError("not-center", "only the center keeps the notice board")
        try:
            data = read_json(ctx.payload)
            title, text = check_note(data.get("title"), data.get("text", ""))
        except ValueError as e:
            raise PackageError("bad-note", str(e)) from None
        src = ctx.header.src
        number = self._file(ctx.conn, src, title, text, ctx.header.created / 1000,
                            ctx.header.id)
        ctx.reply(FILED, json.dumps({"pkg_id": ctx.header.id, "number": number}).encode())
        # Log numbers and ids, never the content.
        ctx.after_commit(lambda: log.info("note_filed", author=src, number=number))

    def _on_filed(self, ctx: ApplyContext) -> None:
        """(bureau, state-DB thread) The center's answer: note the number it gave."""
        if ctx.header.src != self.api.center_id:
            raise PackageError("not-from-center", "only the center files notices")
        try:
            data = read_json(ctx.payload)
            pkg_id, number = str(data["pkg_id"]), int(data["number"])
        except (ValueError, KeyError, TypeError):
            raise PackageError("bad-note-filed", "expected a pkg_id and a number") from None
        done = ctx.conn.execute(
            notes.update()
            .where(notes.c.pkg_id == pkg_id, notes.c.author == self.api.node_id)
            .values(number=number, filed_at=time.time())).rowcount
        if not done:
            raise PackageError("unknown-note", f"no notice of ours went out in {pkg_id}")

    def _file(self, conn: Connection, author: str, title: str, text: str, posted_at: float,
              pkg_id: str | None) -> int:
        """(center) Put a notice on the board; its number is its row id."""
        row = conn.execute(notes.insert().values(
            author=author, title=title, text=text, posted_at=posted_at,
            filed_at=time.time(), pkg_id=pkg_id))
        number = int(row.inserted_primary_key[0])
        conn.execute(notes.update().where(notes.c.id == number).values(number=number))
        return number

    # --- posting and listing (state-DB thread, through api.db) ---------------------------

    def post(self, title: str, text: str) -> dict[str, Any]:
        now = time.time()
        with self.api.state.begin() as conn:
            if self.api.is_center:
                number = self._file(conn, self.api.node_id, title, text, now, None)
                return {"status": "filed", "number": number}
            payload = json.dumps({"title": title, "text": text}, ensure_ascii=False)
            pkg_id = self.api.enqueue(conn, self.api.center_id, NOTE, RESOURCE,
                                      payload.encode())
            conn.execute(notes.insert().values(author=self.api.node_id, title=title,
                                               text=text, posted_at=now, pkg_id=pkg_id))
        return {"status": "sent", "pkg_id": pkg_id}

    def listing(self, author: str | None, limit: int) -> list[dict[str, Any]]:
        q = select(notes).order_by(notes.c.id.desc()).limit(limit)
        if author:
            q = q.where(notes.c.author == author)
        with self.api.state.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["status"] = "filed" if r["filed_at"] else "sent"
        return rows

    def prune(self, before: float) -> int:
        with self.api.state.begin() as conn:
            return conn.execute(delete(notes).where(notes.c.filed_at < before)).rowcount

    # --- control routes ---------------------------------------------------------------------

    @hookimpl
    def exnode_control_routes(self, router: Router) -> None:
        router.get("/notes", self._list_route)
        router.post("/notes", self._post_route)

    async def _post_route(self, req: ControlRequest) -> Any:
        try:
            title, text = check_note(req.arg("title"), req.arg("text", str, ""))
        except ValueError as e:
            raise UsageError(str(e)) from None
        out = await self.api.db(self.post, title, text)
        self.api.wake_outbox()  # publish the new package now, not at the next retry
        return out

    async def _list_route(self, req: ControlRequest) -> Any:
        try:
            limit = int(req.query.get("limit", "50"))
        except ValueError:
            raise UsageError("limit must be a whole number") from None
        return await self.api.db(self.listing, req.query.get("author"), max(1, limit))

    # --- status -----------------------------------------------------------------------------

    @hookimpl
    def exnode_status_sections(self, status: StatusBuilder) -> None:
        # Runs in the state-DB thread already: use the engine directly.
        with self.api.state.connect() as conn:
            rows = conn.execute(select(notes.c.author, func.count(), func.count(notes.c.filed_at))
                                .group_by(notes.c.author).order_by(notes.c.author)).all()
        by_author = {a: n for a, n, _f in rows}
        total, filed = sum(by_author.values()), sum(f for _a, _n, f in rows)
        data = {"notes": total, "filed": filed, "waiting": total - filed,
                "by_author": by_author}
        if self.api.is_center:
            who = ", ".join(f"{a} {n}" for a, n in by_author.items()) or "none yet"
            line = f"notes     {total} on the board ({who})"
        else:
            line = f"notes     {total} posted, {filed} filed by the center"
        status.add("notes", data, [line])

    # --- startup ----------------------------------------------------------------------------

    @hookimpl
    def exnode_startup(self, api: ServiceAPI) -> None:
        if api.is_center:
            api.spawn(self._prune_forever(), "notes: prune the board")

    async def _prune_forever(self) -> None:
        while True:
            n = await self.api.db(self.prune, time.time() - KEEP_S)
            if n:
                log.info("notes_pruned", count=n)
            await asyncio.sleep(3600)
