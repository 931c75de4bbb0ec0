"""exnode's hook specifications: the whole contract between the kernel and its plugins.

A plugin is a module (or, for per-node state, an object) with functions named like the
specs below and decorated with ``@exnode.plugins.hookimpl``. Built-in plugins are listed
in code (``exnode.plugins.manager.DEFAULT_PLUGINS``); third-party plugins are announced
in the ``exnode`` entry-point group of their distribution. ``exnode plugins`` lists both.

The hooks come in three phases, in the order a node calls them:

1. **Load** (once per plugin manager, with no node): things a plugin *adds* to the
   program. Each takes a ``register`` callback; call it once per thing.
2. **Compose** (when a daemon starts, once per node): ``exnode_services`` may return a
   per-node service object. The kernel registers each such object as a plugin of its
   own, so the object's own hook implementations (kinds, routes, status, startup,
   shutdown) are called from then on, beside the modules'.
3. **Run**: ``exnode_startup`` before the node connects, ``exnode_status_sections`` on
   each ``exnode status``, ``exnode_alert`` for each new alert, ``exnode_shutdown``
   after it has stopped.

A service never sees the ``Node``: it gets the narrow interfaces in
:mod:`exnode.node.kernel.api`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from exnode.node.kernel.api import KindSpec, Router, ServiceAPI, StateTables, StatusBuilder

hookspec = pluggy.HookspecMarker("exnode")
hookimpl = pluggy.HookimplMarker("exnode")


# === 1. load =================================================================================

@hookspec
def exnode_crypto_suites(register: Callable[[Any], None]) -> None:
    """Add crypto suites: ``register(suite)``.

    Runs: when the plugin manager is built. ``suite`` has ``id`` (a unique string),
    ``seal(plaintext, recipients, aad)``, ``open(sealed, my_id, my_key, aad)``,
    ``sign(key, data)`` and ``verify(pub, sig, data)``; see
    ``exnode.plugins.builtin.crypto``. Registering an id that is already registered is
    an error. A node sends with the default suite and opens packages of any registered
    one. Return value: ignored.
    """


@hookspec
def exnode_sql_dialects(register: Callable[[Any], None]) -> None:
    """Add SQL dialects: ``register(dialect)``.

    Runs: when the plugin manager is built. ``dialect`` is an
    ``exnode.adapters.dialects.Dialect`` (subclass it: the base class is the portable
    path that works on any database SQLAlchemy knows) whose ``matches(sa_dialect)`` says
    which SQLAlchemy dialects it serves. The first registered match serves a database;
    a name registered twice is an error. Return value: ignored.
    """


@hookspec
def exnode_adapters(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Add data adapters: ``register(kind, factory)``.

    Runs: when the plugin manager is built. ``databases.<name>.kind`` in the node's
    configuration picks the factory (the built-in ``sql`` serves every database
    SQLAlchemy knows). ``factory(engine, resource_id, resource_spec, dialects)`` gets
    the SQLAlchemy engine opened from ``databases.<name>.url`` and the dialect registry,
    and returns an object with the methods of ``exnode.adapters.contract.Adapter``
    (read, fetch, apply, row hashes). Registering a kind twice is an error. Return
    value: ignored.
    """


@hookspec
def exnode_quality_rules(register: Callable[[str, Any], None]) -> None:
    """Add data-rule types and cleaning steps: ``register(name, factory)``.

    Runs: when the plugin manager is built. ``factory`` is a subclass of
    ``exnode.policies.quality.RuleSpec`` (a rule) or ``CleanerSpec`` (a cleaning step):
    a pydantic model whose fields are the YAML options and whose ``compile(ctx)``
    returns the checks. The built-in rules are registered the same way
    (``exnode.policies.quality.builtin_registry``). Return value: ignored.
    """


@hookspec
def exnode_state_tables(register: Callable[[StateTables], None]) -> None:
    """Add tables to the state DB: ``register(StateTables(name, metadata, versions))``.

    Runs: when the plugin manager is built; the tables are created and upgraded by
    Alembic whenever a node opens its state DB. ``versions`` is the folder of the
    plugin's own revisions, a branch labelled ``name`` whose first revision has
    ``down_revision = None`` and ``branch_labels = (name,)``. Return value: ignored.
    """


@hookspec
def exnode_cli_commands(cli: click.Group) -> None:
    """Add commands to the ``exnode`` command line: ``cli`` is the click group.

    Runs: when the ``exnode`` command starts, before it parses its arguments. A command
    reaches the daemon through ``ctx.obj`` (an ``exnode.node.kernel.api.CommandContext``:
    ``config()``, ``call(method, path, body)``, ``show(data, as_json, text)``) and fails
    by raising an ``ExnodeError``, which the CLI prints as one line. Return value: ignored.
    """


# === 2. compose ==============================================================================

@hookspec
def exnode_services(api: ServiceAPI) -> Any:
    """Create this plugin's per-node service.

    Runs: once per daemon, after the state DB is open and before anything is received.
    ``api`` is the kernel as a service sees it. Return an object with hook
    implementations of its own (kinds, routes, status sections, startup, shutdown,
    bound to this node), or None. The kernel registers the object as a plugin.
    """


@hookspec
def exnode_package_kinds(register: Callable[[KindSpec], None]) -> None:
    """Add package kinds: ``register(KindSpec(name, handler, ordered, senders,
    recipients, relay))``.

    Runs: once per daemon, after ``exnode_services``. ``handler(ctx)`` runs in the state-DB
    worker thread inside the transaction that records the package as applied
    (``ctx``: ``exnode.node.kernel.api.ApplyContext``). Raise ``PackageError`` to refuse
    the package (the sender gets a signed refusal) or ``Deferred`` to leave it
    unacknowledged for a later retry. A kind registered twice is an error. Return
    value: ignored.
    """


@hookspec
def exnode_control_routes(router: Router) -> None:
    """Add routes to the control API: ``router.get(path, handler)``,
    ``router.post(path, handler)``.

    Runs: once per daemon, before the control socket opens. ``handler(request)`` is a
    coroutine that gets an ``exnode.node.kernel.api.ControlRequest`` and returns
    JSON-able data. An ``ExnodeError`` it raises becomes a 4xx answer with one line
    (``UsageError`` 400, ``DaemonNotRunning`` 503, others 400); ``TimeoutError`` 504.
    Return value: ignored.
    """


# === 3. run ==================================================================================

@hookspec
def exnode_startup(api: ServiceAPI) -> None:
    """Runs once when the daemon has its state, identity and directory, before it connects
    to the broker. Start background work here with ``api.spawn``. Return value: ignored.
    """


@hookspec
def exnode_status_sections(status: StatusBuilder) -> None:
    """Add sections to ``exnode status``: ``status.add(name, data, lines)``.

    Runs: in the state-DB thread for every status request. Return value: ignored.
    """


@hookspec
def exnode_alert(alert: dict[str, Any]) -> None:
    """Hand a new alert (全程监控: an item past its deadline) to a notification plugin.

    Runs: in the event loop's thread, once per alert, when the monitor service raises it
    (a service calls it through ``ServiceAPI.notify``). ``alert`` is JSON-able: ``id``,
    ``kind`` (access, correction, package, download, freshness, silent), ``item``,
    ``resource``, ``node``, ``item_state``, ``deadline``, ``raised``, ``state``,
    ``text``, ``origin`` (the node that raised it); ids and states only, never personal
    data. Do not block: queue the work (the built-in webhook plugin does). An exception
    is logged and does not reach the monitor. Return value: ignored.
    """


@hookspec
def exnode_shutdown(api: ServiceAPI) -> None:
    """Runs once when the daemon stops, after the broker connection is closed and every
    spawned task is cancelled. Release connections and files here. Return value: ignored.
    """
