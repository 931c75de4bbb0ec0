"""Built-in database sync: ``rows``, ``zero`` and ``rejection`` packages, and a capture
loop for every resource that has ``capture`` configured (see ``exnode.node.sync``)."""

from __future__ import annotations

from typing import Any

from exnode.node.errors import PackageError
from exnode.plugins import hookimpl


def _sync(ctx: Any) -> Any:
    engine = getattr(ctx.node, "sync", None)
    if engine is None:
        raise PackageError("unknown-resource", "database sync is not running on this node")
    return engine


def _rows(ctx: Any) -> None:
    _sync(ctx).on_rows(ctx)


def _zero(ctx: Any) -> None:
    _sync(ctx).on_zero(ctx)


def _rejection(ctx: Any) -> None:
    _sync(ctx).on_rejection(ctx)


def _verify_req(ctx: Any) -> None:
    _sync(ctx).on_verify_request(ctx)


def _verify_res(ctx: Any) -> None:
    _sync(ctx).on_verify_result(ctx)


@hookimpl
def exnode_package_kinds(register) -> None:  # type: ignore[no-untyped-def]
    register("rows", _rows, ordered=True)
    register("zero", _zero, ordered=True)
    register("rejection", _rejection)
    register("verify-req", _verify_req)
    register("verify-res", _verify_res)


@hookimpl
def exnode_startup(node) -> None:  # type: ignore[no-untyped-def]
    from exnode.node.sync import SyncEngine

    engine = node.sync = SyncEngine(node)
    for rid, spec in node.cfg.resources.items():
        if spec.capture is not None:
            node.spawn(engine.run_capture(rid), f"capture {rid}")
    node.spawn(_resume_initial(node, engine), "resume initial loads")


async def _resume_initial(node: Any, engine: Any) -> None:
    for job in await node.db(engine.jobs):
        if job["kind"] == "initial" and job["status"] == "running":
            node.spawn(engine.run_initial(job["resource"]), f"initial {job['resource']}")


@hookimpl
def exnode_shutdown(node) -> None:  # type: ignore[no-untyped-def]
    engine = getattr(node, "sync", None)
    if engine is not None:
        engine.close()
