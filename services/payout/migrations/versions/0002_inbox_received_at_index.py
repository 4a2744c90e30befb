"""inbox: an index on received_at, so the worker can forget event ids past their retention

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 06:00:00.000000
"""
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_inbox_received_at', 'inbox', ['received_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_inbox_received_at', table_name='inbox')
