"""Database errors as one line an operator can act on.

SQLAlchemy's text for a failed connection is several lines: the driver's message, the
statement, and a "Background on this error at: https://sqlalche.me/..." link. What an
operator needs is which setting, which server, and what is wrong, without the password::

    databases.hr: cannot connect to postgresql+psycopg://app@127.0.0.1:5432/hr:
    database "hr" does not exist

:func:`describe` makes that line from an exception; :func:`tidy` cleans a message that
was already turned into text; :func:`install` makes every engine tag its exceptions with
its URL, so that the CLI can name the setting that an error came from.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exnode.node.base.config import Config

_URL_ATTR = "_exnode_url"
_installed = False
_config: Config | None = None

SCHEMES = "postgresql+psycopg, mysql+pymysql or sqlite"


def install(cfg: Config | None = None) -> None:
    """Tag every SQLAlchemy error raised through any engine with the engine's URL (a
    ``handle_error`` listener on the Engine class; idempotent). With ``cfg`` (the
    daemon's configuration), :func:`describe` names the setting of a tagged error by
    itself."""
    global _installed, _config
    if cfg is not None:
        _config = cfg
    if _installed:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def tag(ctx: Any) -> None:
        exc = ctx.sqlalchemy_exception
        if exc is not None and ctx.engine is not None:
            setattr(exc, _URL_ATTR, ctx.engine.url)

    event.listen(Engine, "handle_error", tag)
    _installed = True


def url_of(exc: BaseException) -> Any:
    """The engine URL an error was tagged with by :func:`install`, or None."""
    return getattr(exc, _URL_ATTR, None)


def safe_url(url: Any) -> str:
    """A URL as text with its password masked (``user:***@``) and never shown."""
    if url is None:
        return ""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", str(url))


def _same_db(a: Any, b: Any) -> bool:
    return (a.get_backend_name(), a.host, a.port, a.database, a.username) == \
        (b.get_backend_name(), b.host, b.port, b.database, b.username)


def setting_for(cfg: Config | None, url: Any) -> str | None:
    """The configuration setting (``databases.NAME`` or ``state.url``) whose database
    ``url`` is, or None."""
    if cfg is None or url is None:
        return None
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
        for name, db in cfg.databases.items():
            if _same_db(make_url(db.url), u):
                return f"databases.{name}"
        if _same_db(make_url(cfg.state_url), u):
            return "state.url"
    except Exception:
        return None
    return None


_BACKENDS = {"psycopg": "postgresql", "psycopg2": "postgresql", "asyncpg": "postgresql",
             "pymysql": "mysql", "MySQLdb": "mysql", "mysql": "mysql", "mariadb": "mysql",
             "sqlite3": "sqlite"}


def locate(cfg: Config | None, exc: BaseException) -> tuple[str | None, Any]:
    """(setting, URL) of the configured database an error most likely came from: the URL
    it was tagged with (:func:`install`), else the one database of the driver's kind, else
    the one whose name, or host and port, the message names. (None, None) if unknown."""
    url = url_of(exc)
    if url is not None:
        return setting_for(cfg, url), url
    if cfg is None:
        return None, None
    from sqlalchemy.engine import make_url

    cands: list[tuple[str, Any]] = []
    try:
        cands = [(f"databases.{n}", make_url(d.url)) for n, d in cfg.databases.items()]
        cands.append(("state.url", make_url(cfg.state_url)))
    except Exception:
        return None, None
    text = str(exc)
    m = re.search(r"sqlalchemy\.dialects:([\w.]+)", text)
    if m:  # an unsupported scheme: the database that asks for it
        scheme = m.group(1).replace(".", "+")
        hit = [c for c in cands if c[1].drivername == scheme
               or c[1].get_backend_name() == scheme]
        return hit[0] if len(hit) == 1 else (None, None)
    orig = getattr(exc, "orig", None)
    mod = type(orig).__module__.split(".")[0] if orig is not None else ""
    backend = _BACKENDS.get(mod)
    if backend is None:
        return None, None
    hit = [c for c in cands if c[1].get_backend_name() == backend]
    for test in (lambda u: bool(u.database) and (f'"{u.database}"' in text
                                                 or f"'{u.database}'" in text),
                 lambda u: bool(u.host) and str(u.host) in text
                 and (u.port is None or str(u.port) in text)):
        if len(hit) > 1:
            narrowed = [c for c in hit if test(c[1])]
            hit = narrowed or hit
    return hit[0] if len(hit) == 1 else (None, None)


def _driver_text(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc)


def _first(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return text.strip()


def reason(exc: BaseException, setting: str | None = None, url: Any = None) -> str:
    """What is wrong, in a few words with a hint: 'database "hr" does not exist',
    'wrong password for user "app" (databases.hr.password_file)', 'connection refused:
    is the database server running on 127.0.0.1:5432?'."""
    from sqlalchemy import exc as sa_exc

    hint_pw = f" (check the user in {setting}.url and {setting}.password_file)" \
        if setting and setting.startswith("databases.") else ""
    where = ""
    if url is not None:
        try:
            from sqlalchemy.engine import make_url

            u = make_url(url)
            if u.host:
                where = f"{u.host}:{u.port}" if u.port else u.host
        except Exception:
            pass
    if isinstance(exc, sa_exc.NoSuchModuleError) or (
            isinstance(exc, sa_exc.ArgumentError) and "Could not parse" in str(exc)):
        m = re.search(r"sqlalchemy\.dialects:([\w.+-]+)", str(exc))
        scheme = m.group(1).replace(".", "+") if m else ""
        return (f"unsupported URL scheme{f' {scheme!r}' if scheme else ''} (use {SCHEMES})"
                if m else f"not a database URL (use {SCHEMES}://...)")
    if isinstance(exc, ModuleNotFoundError):
        return f"the database driver is not installed ({exc})"
    text = _driver_text(exc)
    args = getattr(getattr(exc, "orig", None), "args", ())
    code = args[0] if args and isinstance(args[0], int) else None
    if code is not None:  # MySQL / MariaDB: (code, message)
        msg = str(args[1]) if len(args) > 1 else text
        if code == 1049:
            m = re.search(r"'([^']*)'", msg)
            return f'database "{m.group(1) if m else "?"}" does not exist'
        if code in (1044, 1045):
            return f"access denied: {msg}{hint_pw}"
        if code in (2002, 2003, 2005, 2006, 2013):
            return f"cannot reach the database server{f' on {where}' if where else ''} " \
                   f"({_first(msg)}): is it running?"
        return _first(msg)
    low = text.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        m = re.search(r'for user "([^"]*)"', text)
        who = f' for user "{m.group(1)}"' if m else ""
        return f"wrong password{who}{hint_pw}"
    m = re.search(r"FATAL:\s+(.*)", text)
    if m:
        return _first(m.group(1))
    if "connection refused" in low or "could not connect" in low \
            or "timeout expired" in low or "no route to host" in low \
            or "name or service not known" in low or "could not translate host" in low:
        return f"cannot reach the database server{f' on {where}' if where else ''} " \
               f"({_first(text.split('failed:')[-1]).rstrip('.')}): is it running?"
    if "unable to open database file" in low:
        path = getattr(url, "database", None) if url is not None else None
        return f"unable to open database file{f' {path}' if path else ''} (does its " \
               "folder exist and may this user write there?)"
    return tidy(text)


def describe(exc: BaseException, setting: str | None = None, url: Any = None) -> str:
    """One line for a database error: the setting, the URL without its password and
    what is wrong. ``url`` defaults to the one :func:`install` tagged the error with."""
    from sqlalchemy import exc as sa_exc

    url = url if url is not None else url_of(exc)
    if setting is None and url is not None:
        setting = setting_for(_config, url)
    what = reason(exc, setting, url)
    head = f"{setting}: " if setting else ""
    connecting = isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError,
                                  sa_exc.NoSuchModuleError, sa_exc.ArgumentError,
                                  ModuleNotFoundError))
    if connecting and url is not None:
        return f"{head}cannot connect to {safe_url(url)}: {what}"
    if connecting:
        return f"{head}cannot connect: {what}"
    return f"{head}{what}"


_BACKGROUND = re.compile(r"\s*\(Background on this error at: [^)]*\)")
_SQL = re.compile(r"\s*\[SQL: .*", re.S)
_CLASS = re.compile(r"^\(([\w.]+)\)\s*")


def tidy(text: str) -> str:
    """A database message made one line: no '(Background on this error at: ...)' link,
    no '[SQL: ...]' and '[parameters: ...]' part, no '(psycopg.errors.X)' prefix, and
    no password in a URL."""
    text = _BACKGROUND.sub("", text)
    text = _SQL.sub("", text)
    line = _first(text) if text.strip() else text
    line = _CLASS.sub("", line)
    return re.sub(r"(\w+://[^:/@\s]*):[^@\s]*@", r"\1:***@", line)
