"""The tooling's commands, ``exnode demo`` and ``exnode broker``, added through the same
``exnode_cli_commands`` hook as any plugin's (the tooling is the outermost floor: the
CLI does not import it)."""

from __future__ import annotations

import sys

import click

from exnode.plugins import hookimpl


@hookimpl
def exnode_cli_commands(cli: click.Group) -> None:
    cli.add_command(demo)
    cli.add_command(broker)


@click.command()
@click.option("--keep-running", is_flag=True, help="Leave the star up for exploring.")
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Where to put the nodes (default: a new temporary folder).")
@click.option("--json", "as_json", is_flag=True)
def demo(keep_running: bool, directory: str | None, as_json: bool) -> None:
    """Start an embedded broker, a center and two bureaus; enrol, ping, summarise."""
    from exnode.node.tools.demo import run_demo

    sys.exit(run_demo(keep_running=keep_running, directory=directory, as_json=as_json))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=1883, show_default=True, type=click.IntRange(0, 65535),
              help="0 picks a free port.")
def broker(host: str, port: int) -> None:
    """Run the embedded MQTT broker (amqtt) in the foreground, for demos and tests."""
    from exnode.node.tools.broker import free_port, run_broker

    run_broker(host, port or free_port())
