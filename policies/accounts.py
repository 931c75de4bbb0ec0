"""Console accounts (issue 11): roles after GB/T 39477's separation of duties (三员分立),
passwords hashed with argon2id, and lockout after repeated failures. Pure decisions
and hashing only: where accounts are kept, and the console that asks, come on top.

Roles:

- ``sysadmin`` (系统管理员): members and configuration;
- ``secadmin`` (安全管理员): grants and access reviews;
- ``auditor`` (审计员): reads the logs and the console's audit trail, changes nothing;
- ``operator`` (操作员): day-to-day work on data (queries, verification, corrections,
  quarantine);
- ``readonly`` (只读): sees what an operator sees, changes nothing.

An account has exactly one role, so nobody both administers and audits, or both
configures and grants.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

Role = Literal["sysadmin", "secadmin", "auditor", "operator", "readonly"]
ROLES: tuple[Role, ...] = ("sysadmin", "secadmin", "auditor", "operator", "readonly")
#: the three administrators (三员) whose separation GB/T 39477 asks for
ADMINS: tuple[Role, ...] = ("sysadmin", "secadmin", "auditor")
ROLE_NAMES_ZH: dict[Role, str] = {"sysadmin": "系统管理员", "secadmin": "安全管理员",
                                  "auditor": "审计员", "operator": "操作员",
                                  "readonly": "只读"}

#: What each role may do. ``view:*`` actions read, all others change something.
PERMISSIONS: dict[Role, frozenset[str]] = {
    "sysadmin": frozenset({"view:overview", "view:members", "view:config", "view:catalog",
                           "view:stats", "view:ledger", "members:manage", "config:manage",
                           "accounts:manage", "alerts:ack"}),
    "secadmin": frozenset({"view:overview", "view:catalog", "view:access", "view:grants",
                           "view:stats", "access:review", "grants:manage"}),
    "auditor": frozenset({"view:overview", "view:log", "view:audit", "view:catalog",
                          "view:access", "view:grants", "view:ledger", "view:stats"}),
    "operator": frozenset({"view:overview", "view:catalog", "view:access", "view:log",
                           "view:quarantine", "view:corrections", "view:stats",
                           "view:ledger", "query:run", "verify:run", "corrections:manage",
                           "quarantine:manage", "access:request", "alerts:ack"}),
    "readonly": frozenset({"view:overview", "view:catalog", "view:access", "view:log",
                           "view:quarantine", "view:corrections", "view:stats"}),
}


class AccountError(ValueError):
    """An account, role or password that cannot be accepted (one line, for the user)."""


def may(role: str, action: str) -> bool:
    """Whether ``role`` may do ``action``; deny unless granted (unknown roles: nothing)."""
    perms = PERMISSIONS.get(role)  # type: ignore[call-overload]
    return perms is not None and action in perms


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise AccountError(f"unknown role '{role}' (one of: {', '.join(ROLES)})")
    return role  # type: ignore[return-value]


def check_separation(accounts: Iterable[tuple[str, str]]) -> None:
    """Separation of duties (三员分立) over the accounts (name, role) of one console:
    each of the three administrator roles is held, and by different people; an empty
    set is allowed (a console not set up yet). Raises :class:`AccountError`."""
    held: dict[str, list[str]] = {}
    for name, role in accounts:
        check_role(role)
        held.setdefault(role, []).append(name)
    if not held:
        return
    missing = [r for r in ADMINS if r not in held]
    if missing:
        raise AccountError("separation of duties (三员分立) needs a system administrator, "
                           "a security administrator and an auditor; missing: "
                           + ", ".join(f"{r} ({ROLE_NAMES_ZH[r]})" for r in missing))  # type: ignore[index]


NAME = re.compile(r"^[a-z][a-z0-9_.-]{1,31}$")


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise AccountError(f"account name '{name[:40]}': 2-32 characters, lower-case "
                           "letters, digits, '_', '.' or '-', starting with a letter")
    return name


MIN_PASSWORD = 12


def check_password(password: str, name: str = "") -> None:
    """At least 12 characters from at least three of: lower case, upper case, digits,
    other; not containing the account name."""
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password: at least {MIN_PASSWORD} characters")
    classes = sum(bool(re.search(p, password)) for p in
                  (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^a-zA-Z0-9]"))
    if classes < 3:
        raise AccountError("password: use at least three of lower case, upper case, "
                           "digits and other characters")
    if name and name.lower() in password.lower():
        raise AccountError("password: must not contain the account name")


_hasher = PasswordHasher()  # argon2id with the library's current defaults (RFC 9106)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> tuple[bool, str | None]:
    """Whether ``password`` matches ``stored``; and a new hash to store when the stored
    one was made with weaker parameters than today's (else None)."""
    try:
        _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, None
    return True, (_hasher.hash(password) if _hasher.check_needs_rehash(stored) else None)


@dataclass
class Lockout:
    """Failed logins of one account: ``max_failures`` within ``window_s`` lock it for
    ``lock_s``; a success clears the count. Times are seconds (the caller's clock)."""

    max_failures: int = 5
    window_s: float = 900.0
    lock_s: float = 900.0
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0

    def locked(self, now: float) -> bool:
        return now < self.locked_until

    def failed(self, now: float) -> bool:
        """Record a failure; True if the account is locked now."""
        self.failures = [t for t in self.failures if now - t < self.window_s] + [now]
        if len(self.failures) >= self.max_failures:
            self.locked_until = now + self.lock_s
            self.failures = []
        return self.locked(now)

    def succeeded(self) -> None:
        self.failures = []

    def unlock(self) -> None:
        self.failures = []
        self.locked_until = 0.0
