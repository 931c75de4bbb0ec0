"""held_forwards: the center keeps a subscriber's changes while it is not an approved
member, instead of refusing the owner's package

Revision ID: s0002
Revises: s0001
"""
import sqlalchemy as sa
from alembic import op

revision = 's0002'
down_revision = 's0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if 'held_forwards' in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        'held_forwards',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('dest', sa.String(length=64), nullable=False),
        sa.Column('resource', sa.String(length=128), nullable=False),
        sa.Column('created', sa.Float(), nullable=False),
        sa.Column('reason', sa.String(length=200), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_held_forwards_dest', 'held_forwards', ['dest', 'resource', 'id'])


def downgrade() -> None:
    op.drop_index('ix_held_forwards_dest', table_name='held_forwards')
    op.drop_table('held_forwards')
