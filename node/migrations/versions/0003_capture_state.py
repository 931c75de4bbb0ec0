"""capture state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 01:25:06.131032
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
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


def downgrade() -> None:
    op.drop_table('snapshot_rows')
    op.drop_table('capture_state')
