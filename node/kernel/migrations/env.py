"""Alembic environment: runs on the connection that exnode hands it."""

from alembic import context

from exnode.node.kernel.state import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through exnode.node.kernel.state.migrate
    raise RuntimeError("run migrations through exnode (exnode.node.kernel.state.migrate)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
