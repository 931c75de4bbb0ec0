"""Full-process monitoring with time limits (全程监控, 限时办结; a built-in service): every
item this node tracks has a state and a deadline (access requests, corrections,
packages without their receipt, downloads waiting for their holder, resource freshness
and, at the center, members that stopped reporting: see ``items.py``); every
``monitor.scan_every_s`` the service looks at them, and an item past its deadline
raises one alert (one per item and deadline, across repeated scans and restarts).

A new alert is written to the exchange log (ids and states only), logged as a warning,
shown by ``status`` (failing ``status --check``) and by ``exnode alerts``, and handed to
the notification plugins through the ``exnode_alert`` hook (the built-in webhook plugin,
``monitor.webhooks``, is in ``webhook.py``). It stays open until its item is no longer
overdue (cleared) or an operator acknowledges it (``exnode alerts ack ID``: who and
when; cleared all the same once the item is done).

There is no file-transfer service yet: no file transfers are tracked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from exnode.node.kernel.api import ServiceAPI
from exnode.plugins import hookimpl

from .tables import TABLES

if TYPE_CHECKING:
    from .service import MonitorService


@hookimpl
def exnode_state_tables(register: Any) -> None:
    register(TABLES)


@hookimpl
def exnode_services(api: ServiceAPI) -> MonitorService:
    from .service import MonitorService

    return MonitorService(api)


@hookimpl
def exnode_cli_commands(cli: click.Group) -> None:
    from .cli import alerts

    cli.add_command(alerts)
