"""exnode-notes: a notice board (通知公告栏) for exnode.

A bureau posts a short notice to the center; the center keeps it on its board, in its
own ``notes`` table, and answers with the notice's number.

This module is the plugin: the ``exnode`` entry point in pyproject.toml names it. Its
hooks run without a node (the state table, the CLI commands) or create the one
:class:`NotesService` of each node, which holds the rest.
"""

from __future__ import annotations

from typing import Any

import click

from exnode.node.kernel.api import ServiceAPI
from exnode.plugins import hookimpl

from .cli import notes
from .service import NotesService
from .tables import TABLES

__version__ = "0.1.0"


@hookimpl
def exnode_state_tables(register: Any) -> None:
    register(TABLES)


@hookimpl
def exnode_cli_commands(cli: click.Group) -> None:
    cli.add_command(notes)


@hookimpl
def exnode_services(api: ServiceAPI) -> NotesService:
    return NotesService(api)
