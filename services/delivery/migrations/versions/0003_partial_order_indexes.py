"""orders: the pending-expiry and awaiting-stock indexes hold only the orders in that status

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 11:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_status_expiry')
        batch_op.drop_index('ix_orders_awaiting')
        batch_op.create_index('ix_orders_pending_expiry', ['expires_at'], unique=False,
                              postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"))
        batch_op.create_index('ix_orders_awaiting_stock', ['product_id', 'paid_at'], unique=False,
                              postgresql_where=sa.text("status = 'awaiting_stock'"),
                              sqlite_where=sa.text("status = 'awaiting_stock'"))


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_awaiting_stock')
        batch_op.drop_index('ix_orders_pending_expiry')
        batch_op.create_index('ix_orders_awaiting', ['product_id', 'status', 'paid_at'], unique=False)
        batch_op.create_index('ix_orders_status_expiry', ['status', 'expires_at'], unique=False)
