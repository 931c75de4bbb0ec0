"""monitor alerts (全程监控): one per tracked item and missed deadline

Revision ID: m0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = 'm0001'
down_revision = None
branch_labels = ('monitor',)
depends_on = '0001'


def upgrade() -> None:
    op.create_table(
        'monitor_alerts',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('item', sa.String(length=200), nullable=False),
        sa.Column('deadline', sa.Float(), nullable=False),
        sa.Column('resource', sa.String(length=128), nullable=False),
        sa.Column('node', sa.String(length=64), nullable=False),
        sa.Column('item_state', sa.String(length=64), nullable=False),
        sa.Column('text', sa.String(length=500), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('raised', sa.Float(), nullable=False),
        sa.Column('cleared', sa.Float(), nullable=True),
        sa.Column('acked_by', sa.String(length=64), nullable=True),
        sa.Column('acked_at', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('kind', 'item', 'deadline', name='uq_monitor_alerts_item'),
    )
    op.create_index('ix_monitor_alerts_state', 'monitor_alerts', ['state'])


def downgrade() -> None:
    op.drop_index('ix_monitor_alerts_state', table_name='monitor_alerts')
    op.drop_table('monitor_alerts')
