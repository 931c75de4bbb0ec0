"""Plugin host: hook specs, the plugin manager and the built-in plugins."""

from .hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
