"""The monthly ledger (台账, 按月统计, a built-in service): per resource and per peer, the
packages, bytes, queries, verifications, access requests, corrections, zero-update
reports, quarantined rows and freshness compliance of one month, computed from the
exchange log and the service tables (``compute.py`` has the counting rules), as JSON,
CSV, xlsx or PDF, signed by the node (``FILE.sig``, ``signing.py``).

``GET /ledger`` (``service.py``) and ``exnode ledger [verify]`` (``cli.py``). It keeps no
tables of its own and adds no index: the month's rows are found by bisection over the
log's ids (see ``compute.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from exnode.plugins import hookimpl

if TYPE_CHECKING:
    from exnode.node.kernel.api import ServiceAPI


@hookimpl
def exnode_services(api: ServiceAPI) -> Any:
    from .service import LedgerService

    return LedgerService(api)


@hookimpl
def exnode_cli_commands(cli: click.Group) -> None:
    from .cli import ledger

    cli.add_command(ledger)
