"""The console service: accounts, logins with lockout, sessions, and the audit trail.

Everything here is a control route, so the web console (``exnode.node.app.console``)
and the ``exnode console`` commands use one implementation. The routes are on the
control socket, which only the daemon's own user can reach; the web console is the
one that calls ``/console/login`` and ``/console/session`` for its visitors.

The audit trail is append-only three times over: rows are hash-chained
(``policies/chain.py``), the state DB refuses UPDATE and DELETE on the table
(triggers, SQLite and PostgreSQL), and every append writes the trail's new head into
the exchange log, whose own head is signed and witnessed by the center, so a trail cut
off at the end is detected too (``exnode console audit --verify``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import secrets
import time
from typing import Any

import structlog
from sqlalchemy import Connection, delete, func, insert, select, update

from exnode.node.base.errors import ExnodeError, NotFound, UsageError
from exnode.node.kernel.api import ControlRequest, Router, ServiceAPI, StatusBuilder
from exnode.plugins import hookimpl
from exnode.policies import accounts as acc
from exnode.policies import chain

from .tables import accounts, audit, sessions

log = structlog.get_logger("exnode.console")

LANGS = ("zh", "en")
AUDIT_FIELDS = ("actor", "role", "action", "target", "outcome", "detail", "client")
#: failed logins recorded one by one per minute; beyond that they are counted, so a flood
#: of guesses before authentication costs a bounded number of audit rows
FAILED_LOGINS_PER_MINUTE = 20
HASHING_AT_ONCE = 2
HASHING_QUEUE = 64
_DUMMY_HASH = acc.hash_password("not-a-real-password-Xy1!")


class LoginFailed(ExnodeError):
    """Wrong name or password, a locked or disabled account (the message says which only
    where that does not tell a stranger whether an account exists)."""

    exit_code = 4


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _clip(text: Any, n: int) -> str:
    s = "".join(c if c.isprintable() else "?" for c in str(text or ""))
    return s[:n]


def _policy(check: Any, *args: Any) -> Any:
    """A check of ``policies.accounts``, its refusal as a usage error (one line, exit 2)."""
    try:
        return check(*args)
    except acc.AccountError as e:
        raise UsageError(str(e)) from None


def _lang(lang: str) -> str:
    if lang not in LANGS:
        raise UsageError(f"language '{_clip(lang, 8)}': one of {', '.join(LANGS)}")
    return lang


def audit_values(row: Any) -> list[Any]:
    """The values an audit row's hash covers (floats as fixed text)."""
    return [row["id"], f"{row['ts']:.6f}", *(row[f] for f in AUDIT_FIELDS)]


class ConsoleService:
    """Accounts, sessions and the audit trail of this node's console."""

    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        c = api.config.console
        self.session_s = c.session_hours * 3600.0
        self.idle_s = c.idle_minutes * 60.0
        self.lockout = acc.Lockout(max_failures=c.lockout_failures,
                                   window_s=c.lockout_window_s, lock_s=c.lockout_s)
        self._minute = 0
        self._failed_this_minute = 0
        self._suppressed = 0
        # argon2id takes 64 MiB and tens of ms per hash: at most two at a time, so a
        # flood of login attempts costs bounded memory (they queue, and wait their turn)
        self._hashing = asyncio.Semaphore(HASHING_AT_ONCE)
        self._queued = 0

    async def _argon2(self, fn: Any, *args: Any) -> Any:
        if self._queued >= HASHING_QUEUE:  # beyond this, refuse rather than pile up
            raise LoginFailed("too many logins at once; try again in a moment")
        self._queued += 1
        try:
            async with self._hashing:
                return await asyncio.to_thread(fn, *args)
        finally:
            self._queued -= 1

    # --- audit --------------------------------------------------------------------------

    def append_audit(self, conn: Connection, entry: dict[str, Any]) -> dict[str, Any]:
        """Append one entry (inside ``conn``'s transaction) and anchor the trail's new
        head in the exchange log."""
        vals = {f: _clip(entry.get(f), {"detail": 2000, "target": 200, "role": 16,
                                        "outcome": 16}.get(f, 64)) for f in AUDIT_FIELDS}
        vals["outcome"] = vals["outcome"] or "ok"
        last = conn.execute(select(audit.c.id, audit.c.hash).order_by(audit.c.id.desc())
                            .limit(1)).first()
        prev = last.hash if last else chain.GENESIS
        row_id = (last.id if last else 0) + 1
        ts = time.time()
        row = {"id": row_id, "ts": ts, **vals}
        h = chain.link(audit_values(row), prev)
        conn.execute(insert(audit).values(**row, prev_hash=prev, hash=h))
        self.api.log(conn, [{"pkg_id": "", "event": "audit", "peer": vals["actor"][:64],
                             "resource": "", "kind": "console", "status": "anchor",
                             "reason": f"head {row_id} {h}"}])
        return {**row, "hash": h}

    def _audit_db(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self.api.state.begin() as conn:
            return self.append_audit(conn, entry)

    async def audit(self, **entry: Any) -> None:
        await self.api.db(self._audit_db, entry)

    def _audit_list(self, limit: int, before: int | None, actor: str | None) -> list[Any]:
        q = select(audit).order_by(audit.c.id.desc()).limit(limit)
        if before:
            q = q.where(audit.c.id < before)
        if actor:
            q = q.where(audit.c.actor == actor)
        with self.api.state.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def verify_audit(self) -> dict[str, Any]:
        """Recompute the chain, and compare its head with the newest anchor in the
        exchange log."""
        from sqlalchemy import text

        with self.api.state.connect() as conn:
            rows = [dict(r) for r in conn.execute(select(audit).order_by(audit.c.id))
                    .mappings()]
            anchor = conn.execute(text(
                "SELECT reason FROM exchange_log WHERE event = 'audit' AND kind = 'console' "
                "ORDER BY id DESC LIMIT 1")).scalar()
        broken = chain.first_break((audit_values(r), r["prev_hash"], r["hash"]) for r in rows)
        problems = []
        if broken is not None:
            problems.append(f"the audit trail's chain breaks at entry {rows[broken]['id']} "
                            "(edited, deleted or inserted)")
        if anchor:
            try:
                _, a_id, a_hash = anchor.split(" ")
                a = int(a_id)
            except ValueError:
                problems.append("the exchange log's audit anchor is malformed")
            else:
                match = [r for r in rows if r["id"] == a]
                if not match:
                    problems.append(f"the audit trail ends before entry {a}, which the "
                                    "exchange log anchored (cut off)")
                elif match[0]["hash"] != a_hash:
                    problems.append(f"audit entry {a} differs from the exchange log's anchor")
        elif rows:
            problems.append("the exchange log holds no anchor of the audit trail")
        return {"ok": not problems, "entries": len(rows), "problems": problems,
                "head": rows[-1]["hash"] if rows else chain.GENESIS}

    # --- accounts -----------------------------------------------------------------------

    @staticmethod
    def _public(r: Any) -> dict[str, Any]:
        return {"name": r["name"], "role": r["role"], "lang": r["lang"],
                "disabled": bool(r["disabled"]), "locked_until": r["locked_until"] or None,
                "created": r["created"], "last_login": r["last_login"]}

    def _accounts(self) -> list[dict[str, Any]]:
        with self.api.state.connect() as conn:
            return [self._public(r) for r in conn.execute(select(accounts)
                                                          .order_by(accounts.c.name))
                    .mappings()]

    @staticmethod
    def _find(conn: Connection, name: str) -> Any:
        return conn.execute(select(accounts).where(accounts.c.name == name)).mappings().first()

    def _account(self, conn: Connection, name: str) -> Any:
        r = self._find(conn, name)
        if r is None:
            raise NotFound(f"no console account '{_clip(name, 32)}'")
        return r

    def _add(self, name: str, role: str, pw_hash: str, lang: str, actor: dict[str, str]
             ) -> dict[str, Any]:
        now = time.time()
        with self.api.state.begin() as conn:
            if self._find(conn, name) is not None:
                raise UsageError(f"console account '{name}' exists already")
            conn.execute(insert(accounts).values(
                name=name, role=role, pw_hash=pw_hash, lang=lang, disabled=False,
                failures="[]", locked_until=0.0, created=now, updated=now))
            self.append_audit(conn, {**actor, "action": "account.add", "target": name,
                                     "detail": f"role {role}"})
            return self._public(self._account(conn, name))

    def _change(self, name: str, values: dict[str, Any], action: str, detail: str,
                actor: dict[str, str], end_sessions: bool = False) -> dict[str, Any]:
        with self.api.state.begin() as conn:
            self._account(conn, name)
            conn.execute(update(accounts).where(accounts.c.name == name)
                         .values(**values, updated=time.time()))
            if end_sessions:
                conn.execute(delete(sessions).where(sessions.c.name == name))
            self.append_audit(conn, {**actor, "action": action, "target": name,
                                     "detail": detail})
            return self._public(self._account(conn, name))

    # --- logins and sessions --------------------------------------------------------------

    def _login_row(self, name: str) -> Any:
        with self.api.state.connect() as conn:
            return self._find(conn, name)

    def _note_failure(self, name: str | None, client: str, why: str) -> float:
        """Count a failed login: the account's lockout, and (bounded) an audit entry.
        Returns the account's locked_until."""
        now = time.time()
        locked_until = 0.0
        with self.api.state.begin() as conn:
            if name is not None:
                r = self._account(conn, name)
                lk = dataclasses.replace(self.lockout,
                                         failures=json.loads(r["failures"] or "[]"),
                                         locked_until=r["locked_until"] or 0.0)
                if lk.failed(now):
                    locked_until = lk.locked_until
                conn.execute(update(accounts).where(accounts.c.name == name).values(
                    failures=json.dumps(lk.failures), locked_until=lk.locked_until))
                if locked_until:  # locked by this failure (a locked one never gets here)
                    self.append_audit(conn, {"actor": name, "role": r["role"],
                                             "action": "account.locked", "target": name,
                                             "outcome": "refused", "client": client,
                                             "detail": f"{self.lockout.max_failures} failed "
                                                       "logins"})
            minute = int(now // 60)
            if minute != self._minute:
                if self._suppressed:
                    self.append_audit(conn, {"actor": "-", "action": "login",
                                             "outcome": "refused", "detail":
                                             f"{self._suppressed} more failed logins in that "
                                             "minute, not listed one by one"})
                self._minute, self._failed_this_minute, self._suppressed = minute, 0, 0
            self._failed_this_minute += 1
            if self._failed_this_minute <= FAILED_LOGINS_PER_MINUTE:
                self.append_audit(conn, {"actor": name or "-", "action": "login",
                                         "target": name or "", "outcome": "refused",
                                         "client": client, "detail": why})
            else:
                self._suppressed += 1
        return locked_until

    def _open_session(self, name: str, client: str, new_hash: str | None) -> str:
        now = time.time()
        sid = secrets.token_urlsafe(32)
        with self.api.state.begin() as conn:
            vals: dict[str, Any] = {"failures": "[]", "locked_until": 0.0, "last_login": now}
            if new_hash:
                vals["pw_hash"] = new_hash
            conn.execute(update(accounts).where(accounts.c.name == name).values(**vals))
            conn.execute(delete(sessions).where(sessions.c.expires < now))
            conn.execute(insert(sessions).values(sid_hash=_sid_hash(sid), name=name,
                                                 created=now, last_seen=now,
                                                 expires=now + self.session_s))
            r = self._account(conn, name)
            self.append_audit(conn, {"actor": name, "role": r["role"], "action": "login",
                                     "target": name, "client": client})
        return sid

    async def login(self, name: str, password: str, client: str) -> dict[str, Any]:
        """Check a name and password; a new session id on success."""
        client = _clip(client, 64)
        try:
            acc.check_name(name)
        except acc.AccountError:
            name_ok = None
        else:
            name_ok = name
        r = await self.api.db(self._login_row, name_ok) if name_ok else None
        # the same argon2 work whether or not the account exists
        ok, new_hash = await self._argon2(acc.verify_password,
                                          r["pw_hash"] if r else _DUMMY_HASH,
                                          password[:1024])
        now = time.time()
        if r is not None and (r["locked_until"] or 0) > now:
            raise LoginFailed("this account is locked after repeated failed logins; try "
                              f"again in {int((r['locked_until'] - now) // 60) + 1} min or "
                              "ask a system administrator to unlock it")
        if r is None or not ok:
            until = await self.api.db(self._note_failure, r["name"] if r else None, client,
                                      "wrong password" if r else "unknown account")
            if until:
                raise LoginFailed("wrong name or password; the account is now locked for "
                                  f"{int(self.lockout.lock_s // 60)} min")
            raise LoginFailed("wrong name or password")
        if r["disabled"]:
            await self.audit(actor=r["name"], role=r["role"], action="login",
                             target=r["name"], outcome="refused", client=client,
                             detail="account disabled")
            raise LoginFailed("this account is disabled")
        sid = await self.api.db(self._open_session, r["name"], client, new_hash)
        return {"name": r["name"], "role": r["role"], "lang": r["lang"], "sid": sid}

    def _session(self, sid: str) -> dict[str, Any] | None:
        now = time.time()
        h = _sid_hash(sid)
        with self.api.state.begin() as conn:
            s = conn.execute(select(sessions).where(sessions.c.sid_hash == h)).mappings()\
                .first()
            if s is None or s["expires"] < now or now - s["last_seen"] > self.idle_s:
                if s is not None:
                    conn.execute(delete(sessions).where(sessions.c.sid_hash == h))
                return None
            r = self._find(conn, s["name"])
            if r is None or r["disabled"]:
                return None
            if now - s["last_seen"] > min(30.0, self.idle_s / 4):  # seldom, not each page
                conn.execute(update(sessions).where(sessions.c.sid_hash == h)
                             .values(last_seen=now))
            return {"name": r["name"], "role": r["role"], "lang": r["lang"]}

    def _logout(self, sid: str) -> bool:
        with self.api.state.begin() as conn:
            s = conn.execute(select(sessions.c.name).where(
                sessions.c.sid_hash == _sid_hash(sid))).first()
            if s is None:
                return False
            conn.execute(delete(sessions).where(sessions.c.sid_hash == _sid_hash(sid)))
            r = conn.execute(select(accounts.c.role).where(accounts.c.name == s.name)).first()
            self.append_audit(conn, {"actor": s.name, "role": r.role if r else "",
                                     "action": "logout", "target": s.name})
            return True

    # --- hooks ----------------------------------------------------------------------------

    @hookimpl
    def exnode_status_sections(self, status: StatusBuilder) -> None:
        with self.api.state.connect() as conn:
            roles = [tuple(r) for r in conn.execute(select(accounts.c.name, accounts.c.role)
                                                    .where(accounts.c.disabled.is_(False)))]
            n_sessions = conn.execute(select(func.count()).select_from(sessions).where(
                sessions.c.expires > time.time())).scalar()
        c = self.api.config.console
        data = {"listen": c.listen, "accounts": len(roles), "sessions": n_sessions}
        lines = [f"console {'https://' + c.listen if c.listen else 'off'}, "
                 f"{len(roles)} account(s), {n_sessions} session(s)"]
        try:
            acc.check_separation(roles)
        except acc.AccountError as e:
            data["separation"] = str(e)
            if c.listen:
                lines.append(f"  {e}")
        status.add("console", data, lines)

    @hookimpl
    def exnode_control_routes(self, router: Router) -> None:
        router.get("/console/accounts", self._r_accounts)
        router.post("/console/accounts", self._r_add)
        router.post("/console/accounts/{name}/{action}", self._r_change)
        router.post("/console/login", self._r_login)
        router.post("/console/self/password", self._r_self_password)
        router.post("/console/session", self._r_session)
        router.post("/console/logout", self._r_logout)
        router.get("/console/audit", self._r_audit)
        router.post("/console/audit", self._r_audit_add)
        router.get("/console/audit/verify", self._r_audit_verify)

    @staticmethod
    def _actor(req: ControlRequest) -> dict[str, str]:
        return {"actor": _clip(req.body.get("actor") or "cli", 64),
                "role": _clip(req.body.get("actor_role") or "", 16),
                "client": _clip(req.body.get("client") or "", 64)}

    async def _r_accounts(self, _req: ControlRequest) -> Any:
        return await self.api.db(self._accounts)

    async def _r_add(self, req: ControlRequest) -> Any:
        name = _policy(acc.check_name, req.arg("name"))
        role = _policy(acc.check_role, req.arg("role"))
        password = req.arg("password")
        _policy(acc.check_password, password, name)
        lang = _lang(req.arg("lang", str, "zh"))
        pw_hash = await self._argon2(acc.hash_password, password)
        return await self.api.db(self._add, name, role, pw_hash, lang, self._actor(req))

    async def _r_change(self, req: ControlRequest) -> Any:
        name, action = req.params["name"], req.params["action"]
        actor = self._actor(req)
        if action == "password":
            password = req.arg("password")
            _policy(acc.check_password, password, name)
            pw_hash = await self._argon2(acc.hash_password, password)
            return await self.api.db(self._change, name, {"pw_hash": pw_hash},
                                     "account.password", "", actor, True)
        if action == "role":
            role = _policy(acc.check_role, req.arg("role"))
            return await self.api.db(self._change, name, {"role": role}, "account.role",
                                     f"role {role}", actor, True)
        if action == "unlock":
            return await self.api.db(self._change, name, {"locked_until": 0.0,
                                                          "failures": "[]"},
                                     "account.unlock", "", actor)
        if action in ("disable", "enable"):
            return await self.api.db(self._change, name, {"disabled": action == "disable"},
                                     f"account.{action}", "", actor, action == "disable")
        if action == "lang":
            lang = _lang(req.arg("lang"))
            return await self.api.db(self._change, name, {"lang": lang}, "account.lang",
                                     lang, actor)
        raise UsageError(f"unknown account action '{_clip(action, 20)}' (password, role, "
                         "unlock, disable, enable, lang)")

    async def _r_login(self, req: ControlRequest) -> Any:
        return await self.login(str(req.arg("name"))[:64], str(req.arg("password")),
                                str(req.body.get("client") or ""))

    async def _r_self_password(self, req: ControlRequest) -> Any:
        """An account changes its own password: the current one first (a wrong one counts
        towards the lockout), then the new one by the rules; every session ends."""
        name, client = str(req.arg("name"))[:64], _clip(req.body.get("client") or "", 64)
        new = str(req.arg("new"))
        _policy(acc.check_password, new, name)
        r = await self.api.db(self._login_row, name)
        if r is None:
            raise NotFound(f"no console account '{_clip(name, 32)}'")
        ok, _ = await self._argon2(acc.verify_password, r["pw_hash"],
                                   str(req.arg("current"))[:1024])
        if not ok:
            await self.api.db(self._note_failure, name, client, "wrong current password")
            raise LoginFailed("the current password is wrong")
        pw_hash = await self._argon2(acc.hash_password, new)
        return await self.api.db(self._change, name, {"pw_hash": pw_hash}, "account.password",
                                 "changed by the account itself",
                                 {"actor": name, "role": r["role"], "client": client}, True)

    async def _r_session(self, req: ControlRequest) -> Any:
        sid = req.arg("sid")
        return await self.api.db(self._session, sid[:100]) if sid else None

    async def _r_logout(self, req: ControlRequest) -> Any:
        return {"ended": await self.api.db(self._logout, str(req.arg("sid"))[:100])}

    async def _r_audit(self, req: ControlRequest) -> Any:
        try:
            limit = max(1, min(int(req.query.get("limit", "200")), 10_000))
            before = int(req.query["before"]) if req.query.get("before") else None
        except ValueError:
            raise UsageError("limit and before are numbers") from None
        return await self.api.db(self._audit_list, limit, before, req.query.get("actor"))

    async def _r_audit_add(self, req: ControlRequest) -> Any:
        entry = {f: req.body.get(f) for f in AUDIT_FIELDS}
        if not entry.get("action") or not entry.get("actor"):
            raise UsageError("bad request: an audit entry needs an actor and an action")
        return await self.api.db(self._audit_db, entry)

    async def _r_audit_verify(self, _req: ControlRequest) -> Any:
        return await self.api.db(self.verify_audit)
