"""log_witness: the center keeps the highest signed exchange-log head of each member

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'log_witness',
        sa.Column('node_id', sa.String(length=64), nullable=False),
        sa.Column('head_id', sa.BigInteger(), nullable=False),
        sa.Column('head_hash', sa.String(length=64), nullable=False),
        sa.Column('sig', sa.LargeBinary(), nullable=False),
        sa.Column('received_at', sa.Float(), nullable=False),
        sa.Column('alerts', sa.Integer(), nullable=False),
        sa.Column('last_alert', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('node_id'),
    )


def downgrade() -> None:
    op.drop_table('log_witness')
