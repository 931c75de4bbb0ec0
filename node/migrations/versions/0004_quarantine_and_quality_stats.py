"""quarantine and quality stats

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 01:33:31.220226
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
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
