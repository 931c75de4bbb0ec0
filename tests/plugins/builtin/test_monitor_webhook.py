"""The built-in webhook plugin against a real local aiohttp server: one POST per alert,
signed with HMAC-SHA256 over the timestamp and the body, retried after a 500 with the
same delivery id; a refusal (4xx) is not retried; a full queue drops, never blocks; the
key is in no log line."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import pytest
from aiohttp import web

from exnode.node.base.config import WebhookSpec
from exnode.node.tools.broker import free_port
from exnode.plugins.builtin.monitor.webhook import Webhook, signature, where

KEY = b"s3cret-key-of-the-receiver"
ALERT = {"id": 7, "kind": "correction", "item": "0193-abc", "resource": "people",
         "node": "b1", "item_state": "open", "deadline": 1.0, "raised": 2.0,
         "state": "open", "text": "correction 0193-abc ...", "origin": "center"}


class Receiver:
    """A webhook receiver answering with the statuses it is given, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?token=not-for-logs"


def valid(headers: dict[str, str], body: bytes) -> bool:
    ts = headers["X-Exnode-Timestamp"]
    want = "sha256=" + hmac.new(KEY, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Exnode-Signature"], want)


async def _until(cond: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


def test_one_signed_post_and_a_retry_after_a_500(capsys):
    async def run() -> None:
        async with Receiver([500]) as rx:
            wh = Webhook(WebhookSpec(url=rx.url, secret_env="X", backoff_s=0.05), KEY,
                         "center")
            task = asyncio.create_task(wh.run())
            wh.offer(ALERT)
            await _until(lambda: wh.sent == 1)
            await asyncio.sleep(0.2)  # and nothing more comes
            task.cancel()
            assert len(rx.got) == 2  # the 500, then the retry
            for headers, body in rx.got:
                assert valid(headers, body)
                assert json.loads(body) == ALERT
                assert headers["X-Exnode-Delivery"] == "center:7"
                assert headers["Content-Type"].startswith("application/json")
            # a wrong key does not verify
            h, b = rx.got[-1]
            assert h["X-Exnode-Signature"] != signature(b"other", int(h[
                "X-Exnode-Timestamp"]), b)
            assert wh.failed == 0 and wh.status()["to"] == \
                f"http://127.0.0.1:{rx.port}/hook"

    asyncio.run(run())
    assert KEY.decode() not in capsys.readouterr().out


def test_gives_up_after_its_retries_and_does_not_retry_a_refusal(capsys):
    async def run() -> None:
        async with Receiver([503, 503, 503, 400]) as rx:
            wh = Webhook(WebhookSpec(url=rx.url, secret_env="X", retries=2,
                                     backoff_s=0.02), KEY, "b1")
            task = asyncio.create_task(wh.run())
            wh.offer(ALERT)
            await _until(lambda: wh.failed == 1)
            assert len(rx.got) == 3 and wh.last_error == "HTTP 503"
            wh.offer({**ALERT, "id": 8})  # answered 400: one attempt only
            await _until(lambda: wh.failed == 2)
            await asyncio.sleep(0.1)
            assert len(rx.got) == 4 and wh.last_error == "HTTP 400"
            task.cancel()

    asyncio.run(run())
    out = capsys.readouterr().out
    assert "webhook_failed" in out and "not-for-logs" not in out
    assert KEY.decode() not in out


def test_a_dead_receiver_fails_and_a_full_queue_drops():
    async def run() -> None:
        wh = Webhook(WebhookSpec(url=f"http://127.0.0.1:{free_port()}/x", secret_env="X",
                                 retries=1, backoff_s=0.01, queue=2, timeout_s=2), KEY, "b1")
        for i in range(5):
            wh.offer({**ALERT, "id": i})  # nobody sends yet: two fit
        assert wh.queue.qsize() == 2 and wh.dropped == 3
        task = asyncio.create_task(wh.run())
        await _until(lambda: wh.failed == 2)
        task.cancel()
        assert "Connect" in wh.last_error or "OSError" in wh.last_error, wh.last_error

    asyncio.run(run())


def test_no_key_no_sending_and_urls_are_logged_without_secrets():
    wh = Webhook(WebhookSpec(url="https://u:pw@hooks.example:8443/a/b?k=v#f",
                             secret_env="NOT_SET"), None, "b1")
    assert not wh.usable
    wh.offer(ALERT)
    assert wh.queue.qsize() == 0 and wh.dropped == 1
    assert where(wh.spec.url) == "https://hooks.example:8443/a/b"
    assert "pw" not in repr(wh)


@pytest.mark.parametrize("bad", [{"url": "ftp://x"}, {"url": "http://x", "secret_env": "1A"}])
def test_bad_webhook_settings_are_refused(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        WebhookSpec(**{"secret_env": "K", **bad})
