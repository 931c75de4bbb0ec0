"""database sync state (moved: these tables now belong to the database-sync service's
own Alembic branch, ``exnode/plugins/builtin/sync/migrations``; kept so that state DBs
migrated before that move find their revision)

Revision ID: 0002
Revises: 0001
"""

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
