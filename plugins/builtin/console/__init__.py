"""The console (a built-in service): accounts and roles after GB/T 39477's separation
of duties (三员分立), logins with lockout, sessions, and the hash-chained audit trail of
every console action. The web pages themselves are a face on the control API
(``exnode.node.app.console``); this plugin keeps their accounts and audit trail, and
adds ``exnode console``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from exnode.plugins import hookimpl

from .tables import TABLES

if TYPE_CHECKING:
    from exnode.node.kernel.api import ServiceAPI

    from .service import ConsoleService


@hookimpl
def exnode_state_tables(register: Any) -> None:
    register(TABLES)


@hookimpl
def exnode_services(api: ServiceAPI) -> ConsoleService:
    from .service import ConsoleService

    return ConsoleService(api)


@hookimpl
def exnode_cli_commands(cli: click.Group) -> None:
    from .cli import console

    cli.add_command(console)
