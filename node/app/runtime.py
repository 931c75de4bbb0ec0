"""``exnode run``: the daemon in the foreground. It composes the node (kernel and
services) with the control server and stops cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import signal
import sys

import structlog

from exnode.node.app.control import ControlServer, answers
from exnode.node.base.config import Config
from exnode.node.base.errors import ExnodeError
from exnode.node.kernel.node import Node


def configure_logging(level: str = "info", json: bool = True) -> None:
    """structlog JSON lines on stdout (no secrets or personal data are ever logged)."""
    lvl = getattr(logging, level.upper())
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer() if json
                    else structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    # aiomqtt warns about every queue of pending publishes; our own counters say more.
    logging.getLogger("aiomqtt").setLevel(logging.ERROR)
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt's default logger name


def tune_malloc() -> bool:
    """Keep large buffers on glibc's heap instead of a fresh mmap for each.

    A package is copied several times on its way (socket, MQTT decoding, CBOR, crypto);
    with glibc's defaults every copy of a megabyte is a new mapping that is faulted in
    page by page and unmapped again, which measured as half of a node's CPU time for
    1 MiB packages. Above 2 MiB (larger than any MQTT message exnode sends) a buffer
    still gets its own mapping, returned when freed, and at most 16 MiB of free heap is
    kept: a 20 MB package relayed through the center leaves no lasting growth behind.
    Returns False where this is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        return bool(libc.mallopt(m_mmap_threshold, 2 << 20)
                    and libc.mallopt(m_trim_threshold, 16 << 20)
                    and libc.mallopt(m_top_pad, 16 << 20))
    except (OSError, AttributeError):
        return False


async def serve(cfg: Config) -> None:
    """Run one node until SIGTERM/SIGINT."""
    node = Node(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stop.set)
    await node.start()
    control = ControlServer(cfg.socket_path, node.add_routes)
    await control.start()
    console = None
    try:
        if cfg.console.listen:
            from exnode.node.app.console.server import Console

            console = Console(cfg, control.handlers)
            await console.start()
        await node.run()
    finally:
        if console is not None:
            await console.stop()
        await control.stop()
        node.close()


def run_node(cfg: Config) -> None:
    """``exnode run``: the foreground daemon, stopped cleanly by SIGTERM or SIGINT."""
    configure_logging(cfg.log.level)
    tune_malloc()
    if answers(cfg.socket_path):
        raise ExnodeError(f"another exnode is already running on {cfg.socket_path}")
    asyncio.run(serve(cfg))
