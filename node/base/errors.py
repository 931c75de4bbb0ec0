"""One exception hierarchy; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class ExnodeError(Exception):
    """Base of every error a user can act on. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(ExnodeError):
    """The node's YAML file is missing, unreadable or invalid."""

    exit_code = 2


class UsageError(ExnodeError):
    """A command was given arguments that cannot work."""

    exit_code = 2


class NotFound(ExnodeError):
    """What a command names (a package, node, quarantine entry, conflict) does not exist."""

    exit_code = 3


class IdentityError(ExnodeError):
    """Keys, certificates, tokens or the global configuration are missing or invalid."""


class PackageError(ExnodeError):
    """A package was refused. ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DaemonNotRunning(ExnodeError):
    """The CLI needed the daemon's control socket and nobody answered."""


class StateError(ExnodeError):
    """The state database cannot be opened or migrated."""


class Deferred(PackageError):
    """A package cannot be applied now (for example its resource is stopped): it stays
    unacknowledged, so the sender keeps it and tries again later. Raised by a package
    handler; the kernel logs it as ``deferred`` and applies nothing after it in the same
    (source, resource) order."""


class Refused(PackageError):
    """Access was refused by the grants (目录授权): not granted, expired, revoked, over
    its rate or quota, a field outside the grant. ``reason`` says which."""

    exit_code = 4
