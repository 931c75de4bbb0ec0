"""Small messages for the same (recipient, resource) packed into one ``data`` package, up
to ``delivery.batch_bytes`` or ``delivery.batch_linger_ms``."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable

import cbor2

SendMany = Callable[[list[tuple[str, str, str, bytes]]], Awaitable[list[str]]]


class Batcher:
    def __init__(self, send_many: SendMany, batch_bytes: int, linger_ms: float,
                 kind: str = "data") -> None:
        self.send_many = send_many
        self.batch_bytes = batch_bytes
        self.linger_s = linger_ms / 1000
        self.kind = kind
        self._batches: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        self._sizes: dict[tuple[str, str], int] = defaultdict(int)
        self._task: asyncio.Task[None] | None = None

    async def submit(self, dest: str, resource: str, item: bytes) -> None:
        """Queue one message; it leaves when its batch is full or has lingered."""
        key = (dest, resource)
        self._batches[key].append(item)
        self._sizes[key] += len(item)
        if self._sizes[key] >= self.batch_bytes:
            await self._send([key])
        elif self._task is None or self._task.done():
            self._task = asyncio.create_task(self._linger())

    async def _linger(self) -> None:
        await asyncio.sleep(self.linger_s)
        await self.flush()

    async def flush(self) -> None:
        """Send every partly filled batch now."""
        await self._send(list(self._batches))

    async def _send(self, keys: list[tuple[str, str]]) -> None:
        items = []
        for key in keys:
            batch = self._batches.pop(key, [])
            self._sizes.pop(key, None)
            if batch:
                items.append((key[0], self.kind, key[1], cbor2.dumps(batch)))
        if items:
            await self.send_many(items)
