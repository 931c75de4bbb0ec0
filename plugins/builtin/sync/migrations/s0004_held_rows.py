"""held_forwards.rows: the changes in a held batch, logged with it when it goes out

Revision ID: s0004
Revises: s0003
"""
import sqlalchemy as sa
from alembic import op

revision = 's0004'
down_revision = 's0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('held_forwards') as b:
        b.add_column(sa.Column('rows', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('held_forwards') as b:
        b.drop_column('rows')
