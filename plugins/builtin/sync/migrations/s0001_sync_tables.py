"""database sync tables: freshness, row origins, conflicts, notices, initial loads,
capture checkpoints and snapshot hashes, quarantine and quality statistics

The first revision of the sync service's own branch. State DBs made before the sync
service had a branch of its own already hold these tables (from the kernel's revisions
0002-0004 of that time): each group is created only where it is missing.

Revision ID: s0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = 's0001'
down_revision = None
branch_labels = ('sync',)
depends_on = '0001'


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if 'conflicts' not in have:
        _database_sync_state()
    if 'capture_state' not in have:
        _capture_state()
    if 'quality_stats' not in have:
        _quarantine_and_quality_stats()


def _database_sync_state() -> None:
    op.create_table('conflicts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('resource', sa.String(length=128), nullable=False),
    sa.Column('src', sa.String(length=64), nullable=False),
    sa.Column('pkg_id', sa.String(length=36), nullable=False),
    sa.Column('key', sa.String(length=512), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('resolved_at', sa.Float(), nullable=True),
    sa.Column('resolution', sa.String(length=16), nullable=True),
    sa.Column('change', sa.LargeBinary(), nullable=False),
    sa.Column('current', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('conflicts', schema=None) as batch_op:
        batch_op.create_index('ix_conflicts_open', ['status', 'resource'], unique=False)

    op.create_table('freshness',
    sa.Column('resource', sa.String(length=128), nullable=False),
    sa.Column('node', sa.String(length=64), nullable=False),
    sa.Column('last_current', sa.Float(), nullable=False),
    sa.Column('last_change', sa.Float(), nullable=True),
    sa.Column('last_rows', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('resource', 'node')
    )
    op.create_table('notices',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('resource', sa.String(length=128), nullable=False),
    sa.Column('src', sa.String(length=64), nullable=False),
    sa.Column('pkg_id', sa.String(length=36), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('items', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('row_origin',
    sa.Column('resource', sa.String(length=128), nullable=False),
    sa.Column('key', sa.String(length=512), nullable=False),
    sa.Column('origin', sa.String(length=64), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('hash', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('resource', 'key')
    )
    op.create_table('sync_jobs',
    sa.Column('resource', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('rows', sa.BigInteger(), nullable=False),
    sa.Column('total', sa.BigInteger(), nullable=True),
    sa.Column('started', sa.Float(), nullable=False),
    sa.Column('updated', sa.Float(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('after_key', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('resource', 'kind')
    )


def _capture_state() -> None:
    op.create_table('capture_state',
    sa.Column('resource', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.LargeBinary(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('resource', 'name')
    )
    op.create_table('snapshot_rows',
    sa.Column('resource', sa.String(length=128), nullable=False),
    sa.Column('key', sa.LargeBinary(), nullable=False),
    sa.Column('hash', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('resource', 'key')
    )


def _quarantine_and_quality_stats() -> None:
    op.create_table('quality_stats',
    sa.Column('resource', sa.String(length=128), nullable=False),
    sa.Column('stage', sa.String(length=8), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('checked', sa.BigInteger(), nullable=False),
    sa.Column('failed', sa.BigInteger(), nullable=False),
    sa.Column('by_rule', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('resource', 'stage', 'day')
    )
    op.create_table('quarantine',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('resource', sa.String(length=128), nullable=False),
    sa.Column('key', sa.String(length=512), nullable=False),
    sa.Column('stage', sa.String(length=8), nullable=False),
    sa.Column('src', sa.String(length=64), nullable=False),
    sa.Column('pkg_id', sa.String(length=36), nullable=True),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('updated', sa.Float(), nullable=False),
    sa.Column('violations', sa.LargeBinary(), nullable=False),
    sa.Column('row', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.create_index('ix_quarantine_open', ['status', 'resource'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.drop_index('ix_quarantine_open')

    op.drop_table('quarantine')
    op.drop_table('quality_stats')
    op.drop_table('snapshot_rows')
    op.drop_table('capture_state')
    op.drop_table('sync_jobs')
    op.drop_table('row_origin')
    op.drop_table('notices')
    op.drop_table('freshness')
    with op.batch_alter_table('conflicts', schema=None) as batch_op:
        batch_op.drop_index('ix_conflicts_open')

    op.drop_table('conflicts')
