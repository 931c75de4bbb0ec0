"""grants and grant_use: the grant ledger (目录授权) and daily use per grant

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'grants',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('resource', sa.String(length=128), nullable=False),
        sa.Column('grantee', sa.String(length=64), nullable=False),
        sa.Column('service', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('granted_at', sa.Float(), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=True),
        sa.Column('doc', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_grants_who', 'grants', ['resource', 'grantee', 'service'])
    op.create_table(
        'grant_use',
        sa.Column('grant_id', sa.String(length=36), nullable=False),
        sa.Column('day', sa.String(length=10), nullable=False),
        sa.Column('records', sa.BigInteger(), nullable=False),
        sa.Column('requests', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('grant_id', 'day'),
    )


def downgrade() -> None:
    op.drop_table('grant_use')
    op.drop_index('ix_grants_who', table_name='grants')
    op.drop_table('grants')
