"""Grants (授权): what a consumer may do with a resource, and the pure decisions about
them. A grant names one service (``sync``: receive its changes; ``query``: read and
download; ``verify``: check records without seeing values), the fields it may see, an
optional row filter, masking rules (脱敏) applied at the holder, its purpose and legal
basis, an expiry, and a rate limit and daily quota.

Deny by default: no grant, a revoked one or an expired one refuses with a reason code
(``not-granted``, ``grant-revoked``, ``grant-expired``) that travels back to the
consumer as one line. Grants are issued by the center (目录授权) and checked there and
again at the holder of the data, each from its own copy of the grant.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from exnode.node.base.errors import Refused

SERVICES = ("sync", "query", "verify")
MAX_FIELDS = 2_000
MAX_TEXT = 2_000


@dataclass(frozen=True)
class Grant:
    id: str
    resource: str
    grantee: str
    service: str
    fields: tuple[str, ...] | None = None  # None: every field of the resource
    rows: tuple[Any, ...] = ()  # a row filter in policies.filters' wire form
    masks: Mapping[str, str] = field(default_factory=dict)
    purpose: str = ""
    basis: str = ""
    granted_at: float = 0.0
    expires_at: float | None = None
    rate_per_min: int | None = None
    daily_quota: int | None = None
    status: str = "active"  # active | revoked
    revoked_at: float | None = None
    reason: str = ""
    request_id: str | None = None
    holder: str = ""  # the node that answers from its data (center or owner)

    def to_wire(self) -> dict[str, Any]:
        d = asdict(self)
        d["fields"] = list(self.fields) if self.fields is not None else None
        d["rows"] = list(self.rows)
        d["masks"] = dict(self.masks)
        return d

    @classmethod
    def from_wire(cls, d: Any) -> Grant:
        """A grant from a package or the state DB; strict (``ValueError`` on anything
        malformed)."""
        if not isinstance(d, dict):
            raise ValueError("a grant is a map")
        known = set(cls.__dataclass_fields__)
        if set(d) - known:
            raise ValueError(f"unknown grant fields: {sorted(set(d) - known)[:5]}")
        def text(k: str, default: str = "") -> str:
            v = d.get(k, default)
            if not isinstance(v, str) or len(v) > MAX_TEXT:
                raise ValueError(f"grant {k} is not a short text")
            return v
        def num(k: str) -> float | None:
            v = d.get(k)
            if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
                raise ValueError(f"grant {k} is not a number")
            return v
        fields = d.get("fields")
        if fields is not None and (not isinstance(fields, list | tuple) or len(fields) >
                                   MAX_FIELDS or not all(isinstance(f, str) for f in fields)):
            raise ValueError("grant fields are not a list of names")
        masks = d.get("masks") or {}
        if not isinstance(masks, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in masks.items()):
            raise ValueError("grant masks are not a map of field to rule")
        rows = d.get("rows") or []
        if not isinstance(rows, list | tuple):
            raise ValueError("grant rows is not a filter list")
        service = text("service")
        if service not in SERVICES:
            raise ValueError(f"unknown grant service '{service}'")
        status = text("status", "active")
        if status not in ("active", "revoked"):
            raise ValueError(f"unknown grant status '{status}'")
        rate, quota = num("rate_per_min"), num("daily_quota")
        return cls(id=text("id"), resource=text("resource"), grantee=text("grantee"),
                   service=service, fields=tuple(fields) if fields is not None else None,
                   rows=tuple(rows), masks=dict(masks), purpose=text("purpose"),
                   basis=text("basis"), granted_at=float(num("granted_at") or 0.0),
                   expires_at=num("expires_at"),
                   rate_per_min=int(rate) if rate is not None else None,
                   daily_quota=int(quota) if quota is not None else None,
                   status=status, revoked_at=num("revoked_at"), reason=text("reason"),
                   request_id=d.get("request_id") if isinstance(d.get("request_id"), str)
                   else None, holder=text("holder"))

    def refusal(self, now: float | None = None) -> tuple[str, str] | None:
        """Why this grant does not allow access now, or None."""
        now = time.time() if now is None else now
        if self.status == "revoked":
            return "grant-revoked", f"the {self.service} grant on {self.resource} was " \
                f"revoked" + (f": {self.reason}" if self.reason else "")
        if self.expires_at is not None and now >= self.expires_at:
            return "grant-expired", f"the {self.service} grant on {self.resource} expired " \
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(self.expires_at))}"
        return None

    def visible(self, all_fields: Collection[str]) -> list[str]:
        """The fields this grant lets through, in the resource's order."""
        if self.fields is None:
            return list(all_fields)
        allowed = set(self.fields)
        return [f for f in all_fields if f in allowed]

    def check_fields(self, asked: Collection[str], all_fields: Collection[str]) -> None:
        """``asked`` must all be fields of the resource inside this grant."""
        known = set(all_fields)
        for f in asked:
            if f not in known:
                raise Refused("unknown-field", f"'{f}' is not a field of {self.resource} "
                              f"(fields: {', '.join(list(all_fields)[:20])})")
        allowed = set(self.visible(all_fields))
        outside = [f for f in asked if f not in allowed]
        if outside:
            raise Refused("field-not-granted", f"field(s) {', '.join(outside[:10])} of "
                          f"{self.resource} are outside the grant (granted: "
                          f"{', '.join(sorted(allowed)[:20])})")


def refuse_missing(resource: str, grantee: str, service: str) -> Refused:
    return Refused("not-granted", f"{grantee} holds no {service} grant on {resource}; ask "
                   f"with: exnode access request {resource} --service {service}")


class RateMeter:
    """Requests per minute and records per day, per grant (in memory; the day's count
    is also kept in the state DB by its owner so a restart does not reset a quota)."""

    def __init__(self) -> None:
        self._calls: dict[str, deque[float]] = {}

    def take(self, grant: Grant, now: float | None = None) -> None:
        """Count one request against the grant's rate limit, or refuse it."""
        if not grant.rate_per_min:
            return
        now = time.monotonic() if now is None else now
        q = self._calls.setdefault(grant.id, deque())
        while q and q[0] <= now - 60.0:
            q.popleft()
        if len(q) >= grant.rate_per_min:
            raise Refused("over-rate", f"more than {grant.rate_per_min} requests a minute on "
                          f"the {grant.service} grant of {grant.resource}; wait "
                          f"{60.0 - (now - q[0]):.0f} s")
        q.append(now)


def check_quota(grant: Grant, used_today: int, records: int) -> None:
    if grant.daily_quota is not None and used_today + records > grant.daily_quota:
        raise Refused("over-quota", f"the {grant.service} grant of {grant.resource} allows "
                      f"{grant.daily_quota} records a day; {used_today} used today, "
                      f"{records} asked")
