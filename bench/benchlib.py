"""Pieces the benchmarks share: a Mosquitto of their own, generated citizen-ID areas."""

from __future__ import annotations

import subprocess
from pathlib import Path

from stdnum import numdb

from exnode.node.tools.broker import free_port, wait_port


def start_mosquitto(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A Mosquitto on a free loopback port, with TCP_NODELAY and deep queues."""
    port = free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                    "max_queued_messages 1000000\nmax_inflight_messages 0\n")
    p = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    if not wait_port("127.0.0.1", port, 15):
        p.kill()
        raise SystemExit("bench: mosquitto did not start")
    return p, port


def always_valid_counties() -> list[str]:
    """Area codes that stdnum's birth-place table accepts for any birth year."""
    out = []
    for _, province, _, _, children in numdb.get("cn/loc").prefixes:
        for _, county, _, props, _ in children:
            name = props.get("county", "")
            if name and not name.startswith("[") and "," not in name:
                out.append(province + county)
    return out
