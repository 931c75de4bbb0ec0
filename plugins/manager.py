"""The plugin manager: the built-in plugins (listed here, in code) and every plugin of the
``exnode`` entry-point group, and the registry of what their load-phase hooks added."""

from __future__ import annotations

import importlib
import importlib.metadata as md
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from exnode.node.base.errors import ExnodeError

from . import hookspecs

if TYPE_CHECKING:
    from exnode.node.kernel.api import KindSpec, StateTables

ENTRY_POINT_GROUP = "exnode"

# The built-in plugins, registered in code by name (so that `plugins.disable` can name
# them, as it names entry points). Order matters only for `exnode plugins`.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("crypto-x25519-aes256gcm", "exnode.plugins.builtin.crypto"),
    ("sql", "exnode.plugins.builtin.sql"),
    ("basic", "exnode.plugins.builtin.basic"),
    ("sync", "exnode.plugins.builtin.sync"),
    ("catalog", "exnode.plugins.builtin.catalog"),
    ("access", "exnode.plugins.builtin.access"),
    ("verification", "exnode.plugins.builtin.verification"),
    ("query", "exnode.plugins.builtin.query"),
    ("corrections", "exnode.plugins.builtin.corrections"),
    ("ledger", "exnode.plugins.builtin.ledger"),
    ("monitor", "exnode.plugins.builtin.monitor"),
    ("webhook", "exnode.plugins.builtin.monitor.webhook"),
    ("console", "exnode.plugins.builtin.console"),
    ("tools", "exnode.node.tools.commands"),
)

#: The CLI commands each built-in plugin adds, so that ``exnode COMMAND`` loads only the
#: plugin it needs (a second or so less for ``exnode query``); any other name loads them
#: all. A test checks this against what the plugins register.
BUILTIN_COMMANDS: dict[str, str] = {
    cmd: module for module, cmds in (
        ("exnode.plugins.builtin.basic", ("ping", "send")),
        ("exnode.plugins.builtin.sync", ("capture", "conflicts", "quality", "quarantine",
                                         "sync")),
        ("exnode.plugins.builtin.catalog", ("catalog",)),
        ("exnode.plugins.builtin.access", ("access",)),
        ("exnode.plugins.builtin.verification", ("verify",)),
        ("exnode.plugins.builtin.query", ("query",)),
        ("exnode.plugins.builtin.corrections", ("corrections",)),
        ("exnode.plugins.builtin.ledger", ("ledger",)),
        ("exnode.plugins.builtin.console", ("console",)),
        ("exnode.plugins.builtin.monitor", ("alerts",)),
        ("exnode.node.tools.commands", ("broker", "demo")),
    ) for cmd in cmds}


class PluginError(ExnodeError):
    """A plugin registered something twice, or something that cannot work."""


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin and where it came from."""

    name: str
    module: str
    distribution: str
    version: str
    builtin: bool
    hooks: tuple[str, ...]


def make_manager(disable: list[str] | None = None) -> pluggy.PluginManager:
    """A plugin manager with the built-in plugins and every installed ``exnode`` plugin
    loaded, less those named in ``disable``."""
    pm = pluggy.PluginManager("exnode")
    pm.add_hookspecs(hookspecs)
    for name in disable or ():
        pm.set_blocked(name)
    for name, module in DEFAULT_PLUGINS:
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module), name=name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def describe(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Loaded plugins with their distribution, for ``exnode plugins``."""
    dists = {id(p): d for p, d in pm.list_plugin_distinfo()}
    builtin = {name for name, _m in DEFAULT_PLUGINS}
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        if dist is not None:
            dname, version = dist.project_name, dist.version
        else:
            dname, version = "exnode" if name in builtin else "(registered in code)", ""
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        module = getattr(plugin, "__name__", type(plugin).__name__)
        out.append(PluginInfo(name=name, module=module, distribution=dname, version=version,
                              builtin=name in builtin, hooks=hooks))
    return sorted(out, key=lambda p: (not p.builtin, p.name))


def _once(what: str, into: dict[str, Any]) -> Callable[[str, Any], None]:
    def add(key: str, value: Any) -> None:
        if key in into:
            raise PluginError(f"{what} '{key}' is registered twice (by two plugins?)")
        into[key] = value

    return add


class Registry:
    """What the load-phase hooks registered: crypto suites, SQL dialects, adapters,
    quality rules and state tables. Package kinds are added when a node composes its
    services (:meth:`collect_kinds`)."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        from exnode.adapters.dialects import DialectRegistry

        self.pm = pm
        self.suites: dict[str, Any] = {}
        self.kinds: dict[str, KindSpec] = {}
        self.ordered: set[str] = set()  # kinds applied in sequence order
        self.adapters: dict[str, Callable[..., Any]] = {}
        self.rules: list[tuple[str, Any]] = []
        self.tables: dict[str, StateTables] = {}
        self.dialects = DialectRegistry()
        add_suite = _once("crypto suite", self.suites)
        pm.hook.exnode_crypto_suites(register=lambda s: add_suite(s.id, s))
        pm.hook.exnode_sql_dialects(register=self.dialects.register)
        pm.hook.exnode_adapters(register=_once("adapter kind", self.adapters))
        pm.hook.exnode_quality_rules(register=lambda name, f: self.rules.append((name, f)))
        add_tables = _once("state-table set", self.tables)
        pm.hook.exnode_state_tables(register=lambda t: add_tables(t.name, t))

    def collect_kinds(self, spec_type: type[KindSpec]) -> None:
        """Call ``exnode_package_kinds`` (after the services have been registered).
        ``spec_type`` is the kernel's ``KindSpec`` (the manager sits below the kernel)."""
        self.kinds.clear()
        add = _once("package kind", self.kinds)

        def register(spec: Any, handler: Any = None, ordered: bool = False) -> None:
            # register(KindSpec(...)); plugins written for 0.1 call register(name, handler)
            if not isinstance(spec, spec_type):
                spec = spec_type(str(spec), handler, ordered=ordered)
            add(spec.name, spec)

        self.pm.hook.exnode_package_kinds(register=register)
        self.ordered = {k for k, spec in self.kinds.items() if spec.ordered}

    def quality_registry(self) -> Any:
        """The built-in rule types and cleaning steps plus the plugins'."""
        from exnode.policies.quality import builtin_registry

        reg = builtin_registry()
        for name, factory in self.rules:
            reg.register(name, factory)
        return reg


def loaded_distributions() -> dict[str, str]:
    """Installed distributions that bring plugins: exnode itself (the built-ins) and
    those that declare ``exnode`` entry points."""
    out = {"exnode": md.version("exnode")}
    for dist in md.distributions():
        if any(ep.group == ENTRY_POINT_GROUP for ep in dist.entry_points):
            out[dist.metadata["Name"]] = dist.version
    return out
