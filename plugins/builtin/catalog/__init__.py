"""The resource catalog (目录服务, a built-in service): what information resources exist,
who provides them, whether and how they are shared, and their data elements (数据项).

- The owner declares an entry beside the resource in its YAML (``resources.X.catalog``:
  GB/T 21063.3's core metadata, a provincial profile's optional items, the elements);
  elements not written are filled in from the table's reflection.
- The owner publishes it to the center (``catalog-pub``) at start and whenever it
  changed; the center keeps every version (a change is a new version, old versions
  stay readable) and distributes each new version, signed like every package, to every
  member (``catalog``). A node that was away asks for what it missed
  (``catalog-pull``) when it starts.
- Every node can list, search (Chinese included) and export its copy.

Other services read the catalog through ``ServiceAPI.catalog``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import cbor2
import click
import structlog

from exnode.adapters.pool import AdapterPool
from exnode.node.base.config import Config, ResourceSpec
from exnode.node.base.errors import NotFound, PackageError, UsageError
from exnode.node.kernel.api import (
    ApplyContext,
    ControlRequest,
    KindSpec,
    Router,
    ServiceAPI,
    StatusBuilder,
)
from exnode.plugins import hookimpl

from . import store
from .tables import TABLES

log = structlog.get_logger("exnode.catalog")

PUB = "catalog-pub"
DIST = "catalog"
PULL = "catalog-pull"
MAX_ENTRIES = 500  # per package
MAX_DOC = 256 * 1024


def build_entry(cfg: Config, rid: str, spec: ResourceSpec, node_id: str,
                reflected: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The entry of ``rid`` as this node (its owner) publishes it."""
    c = spec.catalog
    assert c is not None
    owner = spec.owner or node_id
    declared = {e.name: e.model_dump() for e in c.elements}
    elements: list[dict[str, Any]] = []
    seen = set()
    for col in reflected or []:
        el = {"name": col["name"], "cn_name": None, "type": col["type"],
              "length": col["length"], "description": None, "standard": None}
        d = declared.get(col["name"])
        if d is not None:
            el.update({k: v for k, v in d.items() if v is not None})
        elements.append(el)
        seen.add(col["name"])
    elements += [d for n, d in declared.items() if n not in seen]
    rid_text = c.resource_id or f"{c.classification}/{rid}"
    return {
        "resource": rid, "provider_node": owner, "name": c.name, "abstract": c.abstract,
        "provider": c.provider or owner, "classification": c.classification,
        "resource_id": rid_text, "metadata_id": c.metadata_id or f"{rid_text}#md",
        "format": c.format, "keywords": list(c.keywords), "share": c.share,
        "share_condition": c.share_condition, "open_type": c.open_type,
        "update_frequency": c.update_frequency or spec.freshness,
        "release_date": c.release_date, "online_address": c.online_address,
        "held_at": c.held_at, "publish_days": c.publish_days, "key": list(spec.key),
        "elements": elements,
    }


def check_doc(doc: Any) -> dict[str, Any]:
    """An entry received in a package: the shape other services rely on, or
    PackageError."""
    if not isinstance(doc, dict):
        raise PackageError("malformed", "a catalog entry is a map")
    for k in ("resource", "provider_node", "name", "abstract", "classification", "share",
              "held_at"):
        if not isinstance(doc.get(k), str) or not doc[k] or len(doc[k]) > 4000:
            raise PackageError("malformed", f"catalog entry without a valid '{k}'")
    if doc["share"] not in ("unconditional", "conditional", "none"):
        raise PackageError("malformed", f"unknown share type '{doc['share']}'")
    if doc["held_at"] not in ("center", "owner"):
        raise PackageError("malformed", f"unknown holder '{doc['held_at']}'")
    els = doc.get("elements")
    if not isinstance(els, list) or not all(isinstance(e, dict) and isinstance(
            e.get("name"), str) for e in els):
        raise PackageError("malformed", "catalog entry elements are not a list of fields")
    if not isinstance(doc.get("key"), list):
        raise PackageError("malformed", "catalog entry without its key fields")
    if len(json.dumps(doc, ensure_ascii=False, default=str)) > MAX_DOC:
        raise PackageError("malformed", "catalog entry too large")
    return doc


class CatalogService:
    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        self.pool = AdapterPool(api.config, api.plugins.adapters, api.plugins.dialects)
        self._current: dict[str, dict[str, Any]] = {}
        self.last_error: str | None = None
        api.provide_catalog(self)

    # --- the view other services read -------------------------------------------------------

    def entry(self, resource: str) -> dict[str, Any] | None:
        return self._current.get(resource)

    def entries(self) -> list[dict[str, Any]]:
        return [self._current[r] for r in sorted(self._current)]

    def _load(self) -> None:
        with self.api.state.connect() as conn:
            self._current = store.current(conn)

    # --- kinds ------------------------------------------------------------------------------

    @hookimpl
    def exnode_package_kinds(self, register: Any) -> None:
        register(KindSpec(PUB, self.on_publish, senders="bureau", recipients="center",
                          relay=False))
        register(KindSpec(DIST, self.on_entries, senders="center", recipients="bureau",
                          relay=False))
        register(KindSpec(PULL, self.on_pull, senders="bureau", recipients="center",
                          relay=False))

    def _entries_of(self, ctx: ApplyContext) -> list[Any]:
        try:
            body = cbor2.loads(ctx.payload)
        except Exception:
            raise PackageError("malformed", "catalog payload is not CBOR") from None
        if not isinstance(body, dict) or not isinstance(body.get("entries"), list) \
                or len(body["entries"]) > MAX_ENTRIES:
            raise PackageError("malformed", "catalog payload without a bounded entry list")
        return body["entries"]

    def on_publish(self, ctx: ApplyContext) -> None:
        """(center) An owner's entries: each changed one becomes a new version, sent
        to every member."""
        src = ctx.header.src
        new = []
        for raw in self._entries_of(ctx):
            doc = check_doc(raw)
            if doc["provider_node"] != src:
                raise PackageError("not-owner", f"{src} may publish only its own resources' "
                                   f"entries, not {doc['resource']} of {doc['provider_node']}")
            cur = self._current.get(doc["resource"])
            if cur is not None and cur["provider_node"] != src:
                raise PackageError("not-owner", f"resource {doc['resource']} is provided by "
                                   f"{cur['provider_node']}, not {src}")
            doc = {k: v for k, v in doc.items() if k not in store.VOLATILE}
            stored = store.store(ctx.conn, doc)
            if stored is not None:
                new.append(stored)
        if new:
            self._distribute(ctx.conn, new)
            ctx.after_commit(lambda: self._current.update({d["resource"]: d for d in new}))
            self.api.log(ctx.conn, [{"pkg_id": ctx.header.id, "event": "catalog",
                                     "peer": src, "resource": d["resource"], "kind": PUB,
                                     "status": f"version {d['version']}"} for d in new])

    def _distribute(self, conn: Any, docs: list[dict[str, Any]],
                    to: list[str] | None = None) -> None:
        d = self.api.directory
        dests = to if to is not None else [m for m in d.ids() if m != self.api.node_id
                                           and m not in d.revoked]
        for i in range(0, len(docs), MAX_ENTRIES):
            body = cbor2.dumps({"entries": docs[i:i + MAX_ENTRIES]})
            for dest in dests:
                self.api.enqueue(conn, dest, DIST, "catalog", body)

    def on_entries(self, ctx: ApplyContext) -> None:
        """(member) New versions from the center."""
        new = []
        for raw in self._entries_of(ctx):
            doc = check_doc(raw)
            if not isinstance(doc.get("version"), int) or not isinstance(doc.get("seq"), int):
                raise PackageError("malformed", "catalog entry without version and seq")
            if store.store(ctx.conn, doc, seq=doc["seq"]) is not None:
                new.append(doc)
        if new:
            ctx.after_commit(lambda: self._current.update({d["resource"]: d for d in new}))

    def on_pull(self, ctx: ApplyContext) -> None:
        """(center) A member asks for every version after the last one it has."""
        try:
            body = cbor2.loads(ctx.payload)
            after = int(body["after"])
        except Exception:
            raise PackageError("malformed", "catalog pull without 'after'") from None
        docs = store.after(ctx.conn, after, 20 * MAX_ENTRIES)
        if docs:
            self._distribute(ctx.conn, docs, [ctx.header.src])

    # --- lifecycle --------------------------------------------------------------------------

    @hookimpl
    def exnode_startup(self, api: ServiceAPI) -> None:
        self._load()
        api.spawn(self._publish_loop(), "catalog publish")

    @hookimpl
    def exnode_shutdown(self, api: ServiceAPI) -> None:
        self.pool.close()

    def own_entries(self) -> tuple[list[dict[str, Any]], list[str]]:
        """(worker thread) The entries this node declares, with reflected elements;
        and the problems met (a database that is away: declared elements only)."""
        out, problems = [], []
        for rid, spec in self.api.config.resources.items():
            if spec.catalog is None:
                continue
            reflected = None
            try:
                reflected = self.pool.adapter(rid).describe()
            except Exception as e:
                self.pool.reset(rid)
                problems.append(f"{rid}: table not reflected ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''})")
            out.append(build_entry(self.api.config, rid, spec, self.api.node_id, reflected))
        return out, problems

    async def publish(self) -> dict[str, Any]:
        docs, problems = await asyncio.to_thread(self.own_entries)
        self.last_error = "; ".join(problems) or None
        if self.api.is_center:
            new = await self.api.db(self._store_own, docs)
            self.api.wake_outbox()
            return {"published": len(docs), "new_versions": len(new), "problems": problems}
        if docs:
            await self.api.send(self.api.center_id, PUB, "catalog",
                                cbor2.dumps({"entries": docs}))
        return {"published": len(docs), "problems": problems}

    def _store_own(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self.api.state.begin() as conn:
            new = [s for s in (store.store(conn, d) for d in docs) if s is not None]
            if new:
                self._distribute(conn, new)
        self._current.update({d["resource"]: d for d in new})
        return new

    async def _publish_loop(self) -> None:
        """Publish at start (and again while a table could not be reflected); a bureau
        also asks for the versions it missed."""
        pulled = self.api.is_center
        while True:
            try:
                if not self.api.directory.has(self.api.center_id):
                    await asyncio.sleep(0.5)  # no global configuration yet
                    continue
                if not pulled:
                    after = await self.api.db(self._last_seq)
                    await self.api.send(self.api.center_id, PULL, "catalog",
                                        cbor2.dumps({"after": after}))
                    pulled = True
                await self.publish()
            except Exception as e:  # never end the loop on a passing problem
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("catalog_publish_failed", error=self.last_error[:300])
            if self.last_error is None:
                return
            await asyncio.sleep(60.0)

    def _last_seq(self) -> int:
        with self.api.state.connect() as conn:
            return store.last_seq(conn)

    # --- status -----------------------------------------------------------------------------

    @hookimpl
    def exnode_status_sections(self, status: StatusBuilder) -> None:
        own = [r for r, s in self.api.config.resources.items() if s.catalog is not None]
        lines = [f"catalog   {len(self._current)} resource(s) listed, {len(own)} published "
                 "here" + (f"; {self.last_error}" if self.last_error else "")]
        status.add("catalog", {"entries": len(self._current), "own": own,
                               "last_error": self.last_error}, lines)

    # --- control routes ---------------------------------------------------------------------

    @hookimpl
    def exnode_control_routes(self, router: Router) -> None:
        router.get("/catalog", self._list)
        router.get("/catalog/search", self._search)
        router.post("/catalog/publish", self._publish)
        router.get("/catalog/{resource}", self._show)

    async def _list(self, _req: ControlRequest) -> Any:
        return self.entries()

    async def _search(self, req: ControlRequest) -> Any:
        q = req.query.get("q", "").strip()
        if not q:
            raise UsageError("say what to search for")
        if len(q) > 200:
            raise UsageError("a search of at most 200 characters")
        return await self.api.db(self._search_db, q)

    def _search_db(self, q: str) -> list[dict[str, Any]]:
        with self.api.state.connect() as conn:
            return store.search(conn, q)

    async def _show(self, req: ControlRequest) -> Any:
        rid = req.params["resource"]
        v = req.query.get("version")
        try:
            ver = int(v) if v else None
        except ValueError:
            raise UsageError(f"'{v}' is not a version number") from None
        return await self.api.db(self._show_db, rid, ver)

    def _show_db(self, rid: str, ver: int | None) -> dict[str, Any]:
        with self.api.state.connect() as conn:
            doc = store.version(conn, rid, ver)
            if doc is None:
                raise NotFound(f"the catalog lists no resource '{rid}'" + (
                    f" in version {ver}" if ver is not None else ""))
            return {**doc, "versions": store.versions(conn, rid)}

    async def _publish(self, _req: ControlRequest) -> Any:
        return await self.publish()


@hookimpl
def exnode_state_tables(register: Any) -> None:
    register(TABLES)


@hookimpl
def exnode_services(api: ServiceAPI) -> CatalogService:
    return CatalogService(api)


@hookimpl
def exnode_cli_commands(cli: click.Group) -> None:
    from .cli import catalog

    cli.add_command(catalog)
