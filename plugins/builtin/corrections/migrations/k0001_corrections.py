"""corrections (校核纠错) with their owner's deadline

Revision ID: k0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = 'k0001'
down_revision = None
branch_labels = ('corrections',)
depends_on = '0001'


def upgrade() -> None:
    op.create_table(
        'corrections',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('resource', sa.String(length=128), nullable=False),
        sa.Column('consumer', sa.String(length=64), nullable=False),
        sa.Column('owner', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('due', sa.Float(), nullable=True),
        sa.Column('overdue', sa.Boolean(), nullable=False),
        sa.Column('created', sa.Float(), nullable=False),
        sa.Column('updated', sa.Float(), nullable=False),
        sa.Column('doc', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_corrections_status', 'corrections', ['status', 'due'])


def downgrade() -> None:
    op.drop_index('ix_corrections_status', table_name='corrections')
    op.drop_table('corrections')
