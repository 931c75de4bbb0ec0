"""exnode's hook specifications: the whole contract between the core and its plugins.

A plugin is a module or object with functions named like the specs below, decorated
with ``@exnode.plugins.hookimpl``, and announced through the ``exnode`` entry-point
group in its distribution's metadata. The built-in plugins (``plugins/builtin``) are
registered exactly the same way, so they show that these hooks are enough.

Most hooks take a ``register`` callback: call it once for each thing you add.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("exnode")
hookimpl = pluggy.HookimplMarker("exnode")


# --- security --------------------------------------------------------------------------

@hookspec
def exnode_crypto_suites(register: Any) -> None:
    """Add crypto suites: ``register(suite)``.

    A suite seals a payload to its recipients and signs packages; see
    ``exnode.plugins.builtin.crypto_default`` for the interface (``id``, ``seal``,
    ``open``, ``sign``, ``verify``). A node sends with the default suite
    (``x25519-hkdf-sha256-aes256gcm-ed25519``) and opens packages of any registered suite.
    """


# --- packages --------------------------------------------------------------------------

@hookspec
def exnode_package_kinds(register: Any) -> None:
    """Add handlers for package kinds: ``register(kind, handler, ordered=False)``.

    ``handler(ctx)`` runs in the node's state-DB worker thread, inside the transaction
    that records the package as applied, so whatever it writes through ``ctx.conn`` is
    applied exactly once. ``ctx`` gives ``header``, ``payload`` (plaintext bytes),
    ``conn``, ``reply(kind, payload)`` (queued in the same transaction) and
    ``after_commit(fn)``. Raise ``exnode.node.errors.PackageError`` to refuse the
    package; the sender then gets a signed refusal. ``ordered=True`` packages of the
    kind are applied in sequence order per (source, resource).
    """


# --- data quality ----------------------------------------------------------------------

@hookspec
def exnode_quality_rules(register: Any) -> None:
    """Add data-rule types and cleaning steps: ``register(name, factory)``.

    ``factory`` is a subclass of ``exnode.policies.quality.RuleSpec`` (a rule) or
    ``CleanerSpec`` (a cleaning step): a pydantic model whose fields are the YAML
    options and whose ``compile(ctx)`` returns the checks. The built-in rules are
    registered the same way (``exnode.policies.quality.builtin_registry``).
    """


# --- lifecycle -------------------------------------------------------------------------

@hookspec
def exnode_startup(node: Any) -> None:
    """Called once when the daemon has opened its state and identity, before it
    connects to the broker. ``node`` is the running :class:`exnode.node.daemon.Node`."""


@hookspec
def exnode_shutdown(node: Any) -> None:
    """Called once when the daemon stops, after the broker connection is closed."""


@hookspec
def exnode_cli_commands(cli: Any) -> None:
    """Add commands to the ``exnode`` command line: ``cli`` is the click group."""
