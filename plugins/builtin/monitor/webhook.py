"""The built-in webhook notification plugin (registered as ``webhook``; disable it with
``plugins.disable: [webhook]``): each new alert, as the ``exnode_alert`` hook hands it
over, is POSTed as JSON to every ``monitor.webhooks`` URL.

- Signed: ``X-Exnode-Timestamp`` (Unix seconds) and ``X-Exnode-Signature:
  sha256=<hex>``, the HMAC-SHA256 of ``"<timestamp>." + body`` under the key in the
  environment variable ``secret_env`` names (read once at start; never logged, never in
  the configuration). ``X-Exnode-Delivery`` (``<node>:<alert id>``) is the same on every
  retry, for the receiver to drop repeats. Without the key nothing is sent (one error
  line at start, a problem in ``status``).
- Never in the monitor's way: the hook only queues (at most ``queue`` alerts per URL;
  beyond that a new alert is dropped, and logged); one task per URL sends, in order.
- Retries on a 5xx, 429, timeout or connection error, ``retries`` times, waiting
  ``backoff_s`` and doubling (at most 300 s); a delivery that fails for good is one
  warning line (the URL without its query, the alert id, the status or error).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from exnode.node.base.config import WebhookSpec
from exnode.node.kernel.api import ServiceAPI, StatusBuilder
from exnode.plugins import hookimpl

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger("exnode.webhook")

MAX_BACKOFF_S = 300.0


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Exnode-Signature`` header: ``sha256=`` HMAC-SHA256 of "<ts>." + body."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def where(url: str) -> str:
    """A URL as it may be logged: no user, password, query or fragment."""
    u = urlsplit(url)
    host = u.hostname or ""
    return f"{u.scheme}://{host}" + (f":{u.port}" if u.port else "") + u.path


class Webhook:
    """One URL: its queue, its sender task and its counts."""

    def __init__(self, spec: WebhookSpec, secret: bytes | None, origin: str) -> None:
        self.spec = spec
        self._secret = secret
        self.origin = origin
        self.to = where(spec.url)
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(spec.queue)
        self.sent = self.failed = self.dropped = 0
        self.last_error = ""

    def __repr__(self) -> str:  # never the key
        return f"Webhook({self.to})"

    @property
    def usable(self) -> bool:
        return bool(self._secret)

    def offer(self, alert: dict[str, Any]) -> None:
        """Queue an alert (never blocks)."""
        if not self.usable:
            self.dropped += 1
            return
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("webhook_dropped", to=self.to, alert=alert.get("id"),
                        queued=self.queue.qsize())

    def request(self, alert: dict[str, Any], now: float | None = None
                ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one attempt."""
        assert self._secret is not None
        body = json.dumps(alert, ensure_ascii=False, sort_keys=True).encode()
        ts = int(time.time() if now is None else now)
        return body, {"Content-Type": "application/json; charset=utf-8",
                      "User-Agent": "exnode-webhook",
                      "X-Exnode-Timestamp": str(ts),
                      "X-Exnode-Signature": signature(self._secret, ts, body),
                      "X-Exnode-Delivery": f"{self.origin}:{alert.get('id')}"}

    async def deliver(self, session: aiohttp.ClientSession, alert: dict[str, Any]) -> bool:
        """POST one alert, with retries; whether it was taken (a 2xx answer)."""
        import aiohttp

        wait = self.spec.backoff_s
        error = ""
        for attempt in range(self.spec.retries + 1):
            if attempt:
                await asyncio.sleep(wait)
                wait = min(wait * 2, MAX_BACKOFF_S)
            body, headers = self.request(alert)  # a fresh timestamp each time
            try:
                async with session.post(self.spec.url, data=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(
                                            total=self.spec.timeout_s),
                                        allow_redirects=False) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self.sent += 1
                        return True
                    error = f"HTTP {resp.status}"
                    if resp.status < 500 and resp.status != 429:
                        break  # refused: the same request will be refused again
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                error = type(e).__name__ + (f": {e}" if str(e) else "")
        self.failed += 1
        self.last_error = error[:200]
        log.warning("webhook_failed", to=self.to, alert=alert.get("id"),
                    attempts=attempt + 1, error=self.last_error)
        return False

    async def run(self) -> None:
        """Send what is queued, one alert after the other, until cancelled."""
        import aiohttp

        async with aiohttp.ClientSession() as session:
            while True:
                alert = await self.queue.get()
                try:
                    await self.deliver(session, alert)
                except Exception as e:  # never end the task
                    self.failed += 1
                    self.last_error = f"{type(e).__name__}"
                    log.error("webhook_failed", to=self.to, alert=alert.get("id"),
                              error=self.last_error)

    def status(self) -> dict[str, Any]:
        return {"to": self.to, "usable": self.usable, "queued": self.queue.qsize(),
                "sent": self.sent, "failed": self.failed, "dropped": self.dropped,
                "last_error": self.last_error}


class WebhookNotifier:
    """Every ``monitor.webhooks`` URL of this node."""

    def __init__(self, api: ServiceAPI) -> None:
        self.api = api
        self.hooks: list[Webhook] = []
        for spec in api.config.monitor.webhooks:
            key = os.environ.get(spec.secret_env, "")
            self.hooks.append(Webhook(spec, key.encode() if key else None, api.node_id))

    @hookimpl
    def exnode_startup(self, api: ServiceAPI) -> None:
        for h in self.hooks:
            if not h.usable:
                log.error("webhook_secret_missing", to=h.to, env=h.spec.secret_env)
                continue
            api.spawn(h.run(), f"webhook {h.to}")

    @hookimpl
    def exnode_alert(self, alert: dict[str, Any]) -> None:
        for h in self.hooks:
            h.offer(alert)

    @hookimpl
    def exnode_status_sections(self, status: StatusBuilder) -> None:
        if not self.hooks:
            return
        data = [h.status() for h in self.hooks]
        for h in self.hooks:
            if not h.usable:
                status.problem(f"webhook {h.to}: the environment variable "
                               f"{h.spec.secret_env} (its HMAC key) is not set; alerts are "
                               "not sent there")
        status.add("webhooks", data, [
            f"webhook   {d['to']}: {d['sent']} sent, {d['failed']} failed, {d['dropped']} "
            f"dropped, {d['queued']} queued" + (f" (last: {d['last_error']})"
                                                 if d["last_error"] else "") for d in data])


@hookimpl
def exnode_services(api: ServiceAPI) -> WebhookNotifier | None:
    return WebhookNotifier(api) if api.config.monitor.webhooks else None
