"""database sync state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 01:04:37.436198
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
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


def downgrade() -> None:
    op.drop_table('sync_jobs')
    op.drop_table('row_origin')
    op.drop_table('notices')
    op.drop_table('freshness')
    with op.batch_alter_table('conflicts', schema=None) as batch_op:
        batch_op.drop_index('ix_conflicts_open')

    op.drop_table('conflicts')
