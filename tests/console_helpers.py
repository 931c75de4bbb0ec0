"""Helpers for the web console's tests: a free port, accounts, and a small HTTPS client
that logs in through the login form like a browser does."""

from __future__ import annotations

import re
import socket
from typing import Any

import httpx

PASSWORDS = {"admin": "Ghj-4412-kkLp!", "sec": "Rty-5523-mmNb!", "aud": "Qwe-7788-zzXc!",
             "op": "Uio-9901-ppLk!", "ro": "Asd-3344-vvBn!"}
ROLES = {"admin": "sysadmin", "sec": "secadmin", "aud": "auditor", "op": "operator",
         "ro": "readonly"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def add_accounts(star: Any, node: str, names: tuple[str, ...] = tuple(ROLES),
                 suffix: str = "") -> None:
    for n in names:
        r = star.cli(node, "console", "add", n + suffix, "--role", ROLES[n],
                     "--password-stdin", "--json", input_text=PASSWORDS[n])
        assert r.returncode == 0, r.stdout + r.stderr


def csrf_of(html: str) -> str:
    m = re.search(r'name="_csrf" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


class Web:
    """A visitor of one console (cookies kept, TLS certificate not checked: it is the
    self-signed one the console made)."""

    def __init__(self, port: int) -> None:
        self.base = f"https://127.0.0.1:{port}"
        self.c = httpx.Client(base_url=self.base, verify=False, follow_redirects=False,
                              timeout=30.0)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.c.get(path, **kw)

    def post(self, path: str, data: dict[str, str] | None = None, csrf: bool = True,
             **kw: Any) -> httpx.Response:
        body = dict(data or {})
        if csrf:
            body["_csrf"] = self.token()
        return self.c.post(path, data=body, **kw)

    def token(self, path: str = "/") -> str:
        r = self.get(path if path != "/" or "exnode_console" in self.c.cookies else "/login")
        if r.status_code == 302:
            r = self.get("/login")
        return csrf_of(r.text)

    def login(self, name: str, password: str | None = None) -> httpx.Response:
        tok = csrf_of(self.get("/login").text)
        return self.c.post("/login", data={"_csrf": tok, "name": name,
                                           "password": password or PASSWORDS[name]})

    def close(self) -> None:
        self.c.close()
