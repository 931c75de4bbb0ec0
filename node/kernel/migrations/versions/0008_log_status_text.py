"""exchange_log.status: 200 characters (services log short texts there, such as
"1000 rows applied", which PostgreSQL refused in 16)

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch: an ALTER where the database has one; SQLite copies the table once
    with op.batch_alter_table('exchange_log', schema=None) as batch_op:
        batch_op.alter_column('status', existing_type=sa.String(length=16),
                              type_=sa.String(length=200), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('exchange_log', schema=None) as batch_op:
        batch_op.alter_column('status', existing_type=sa.String(length=200),
                              type_=sa.String(length=16), existing_nullable=False)
