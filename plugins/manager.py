"""The plugin manager: loads every plugin of the ``exnode`` entry-point group."""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "exnode"


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
    """A plugin manager with every installed ``exnode`` plugin loaded."""
    pm = pluggy.PluginManager("exnode")
    pm.add_hookspecs(hookspecs)
    for name in disable or ():
        pm.set_blocked(name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def describe(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Loaded plugins with their distribution, for ``exnode plugins``."""
    dists = {id(p): d for p, d in pm.list_plugin_distinfo()}
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        dname = dist.project_name if dist is not None else "(registered in code)"
        version = dist.version if dist is not None else ""
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        module = getattr(plugin, "__name__", type(plugin).__name__)
        out.append(PluginInfo(name=name, module=module, distribution=dname, version=version,
                              builtin=dname == "exnode", hooks=hooks))
    return sorted(out, key=lambda p: (not p.builtin, p.name))


class Registry:
    """What the plugins registered: crypto suites and package-kind handlers."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.suites: dict[str, Any] = {}
        self.kinds: dict[str, Any] = {}
        self.ordered: set[str] = set()

        def add_suite(suite: Any) -> None:
            self.suites[suite.id] = suite

        def add_kind(kind: str, handler: Any, ordered: bool = False) -> None:
            self.kinds[kind] = handler
            if ordered:
                self.ordered.add(kind)

        pm.hook.exnode_crypto_suites(register=add_suite)
        pm.hook.exnode_package_kinds(register=add_kind)


def loaded_distributions() -> dict[str, str]:
    """Installed distributions that declare ``exnode`` entry points."""
    out = {}
    for dist in md.distributions():
        if any(ep.group == ENTRY_POINT_GROUP for ep in dist.entry_points):
            out[dist.metadata["Name"]] = dist.version
    return out
