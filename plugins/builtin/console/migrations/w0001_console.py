"""console accounts, sessions and the hash-chained audit trail

Revision ID: w0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = 'w0001'
down_revision = None
branch_labels = ('console',)
depends_on = '0001'


def upgrade() -> None:
    op.create_table(
        'console_accounts',
        sa.Column('name', sa.String(length=32), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('pw_hash', sa.Text(), nullable=False),
        sa.Column('lang', sa.String(length=8), nullable=False),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.Column('failures', sa.Text(), nullable=False),
        sa.Column('locked_until', sa.Float(), nullable=False),
        sa.Column('created', sa.Float(), nullable=False),
        sa.Column('updated', sa.Float(), nullable=False),
        sa.Column('last_login', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('name'),
    )
    op.create_table(
        'console_sessions',
        sa.Column('sid_hash', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=32), nullable=False),
        sa.Column('created', sa.Float(), nullable=False),
        sa.Column('last_seen', sa.Float(), nullable=False),
        sa.Column('expires', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('sid_hash'),
    )
    op.create_table(
        'console_audit',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('ts', sa.Float(), nullable=False),
        sa.Column('actor', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('action', sa.String(length=64), nullable=False),
        sa.Column('target', sa.String(length=200), nullable=False),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('client', sa.String(length=64), nullable=False),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_console_audit_ts', 'console_audit', ['ts'])
    # append-only in the database too: the chain detects an edit, these refuse it
    name = op.get_bind().dialect.name
    if name == 'sqlite':
        for what in ('UPDATE', 'DELETE'):
            op.execute(f"CREATE TRIGGER console_audit_no_{what.lower()} BEFORE {what} ON "
                       "console_audit BEGIN SELECT RAISE(ABORT, 'the console audit trail "
                       "is append-only'); END")
    elif name == 'postgresql':
        op.execute("CREATE FUNCTION console_audit_append_only() RETURNS trigger AS $$ "
                   "BEGIN RAISE EXCEPTION 'the console audit trail is append-only'; END "
                   "$$ LANGUAGE plpgsql")
        op.execute("CREATE TRIGGER console_audit_append_only BEFORE UPDATE OR DELETE ON "
                   "console_audit FOR EACH ROW EXECUTE FUNCTION console_audit_append_only()")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER IF EXISTS console_audit_append_only ON console_audit")
        op.execute("DROP FUNCTION IF EXISTS console_audit_append_only()")
    op.drop_table('console_audit')
    op.drop_table('console_sessions')
    op.drop_table('console_accounts')
