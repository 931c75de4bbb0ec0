"""catalog entries, versioned, with full-text search (FTS5 trigram on SQLite, pg_trgm on
PostgreSQL when the extension can be created)

Revision ID: c0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = 'c0001'
down_revision = None
branch_labels = ('catalog',)
depends_on = '0001'


def upgrade() -> None:
    op.create_table(
        'catalog_entries',
        sa.Column('resource', sa.String(length=128), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('provider_node', sa.String(length=64), nullable=False),
        sa.Column('current', sa.Boolean(), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('published_at', sa.Float(), nullable=False),
        sa.Column('doc', sa.Text(), nullable=False),
        sa.Column('search_text', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('resource', 'version'),
    )
    op.create_index('ix_catalog_seq', 'catalog_entries', ['seq'])
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite':
        # trigram: substring search that works for Chinese, which has no spaces
        op.execute("CREATE VIRTUAL TABLE catalog_fts USING fts5(resource UNINDEXED, "
                   "text, tokenize='trigram')")
    elif bind.dialect.name == 'postgresql':
        try:
            with bind.begin_nested():
                op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                op.execute("CREATE INDEX ix_catalog_trgm ON catalog_entries USING gin "
                           "(search_text gin_trgm_ops)")
        except sa.exc.DBAPIError:
            pass  # no extension rights: search still works, by a scan


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite':
        op.execute("DROP TABLE IF EXISTS catalog_fts")
    op.drop_index('ix_catalog_seq', table_name='catalog_entries')
    op.drop_table('catalog_entries')
