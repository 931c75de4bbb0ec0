"""access requests with their step and its deadline

Revision ID: a0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = 'a0001'
down_revision = None
branch_labels = ('access',)
depends_on = '0001'


def upgrade() -> None:
    op.create_table(
        'access_requests',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('resource', sa.String(length=128), nullable=False),
        sa.Column('consumer', sa.String(length=64), nullable=False),
        sa.Column('provider', sa.String(length=64), nullable=False),
        sa.Column('service', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('due', sa.Float(), nullable=True),
        sa.Column('overdue', sa.Boolean(), nullable=False),
        sa.Column('created', sa.Float(), nullable=False),
        sa.Column('updated', sa.Float(), nullable=False),
        sa.Column('doc', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_access_status', 'access_requests', ['status', 'due'])


def downgrade() -> None:
    op.drop_index('ix_access_status', table_name='access_requests')
    op.drop_table('access_requests')
