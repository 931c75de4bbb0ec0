"""received: the messages of ``data`` packages, in order, exactly once

The first revision of the basic service's own branch. State DBs made before the basic
service had a branch of its own already hold the table (from the kernel's revision
0001 of that time): it is created only where it is missing.

Revision ID: b0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = 'b0001'
down_revision = None
branch_labels = ('basic',)
depends_on = '0001'


def upgrade() -> None:
    if 'received' in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table('received',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('pkg_id', sa.String(length=36), nullable=False),
    sa.Column('src', sa.String(length=64), nullable=False),
    sa.Column('resource', sa.String(length=128), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('item', sa.Integer(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('received', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_received_pkg_id'), ['pkg_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('received', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_received_pkg_id'))

    op.drop_table('received')
