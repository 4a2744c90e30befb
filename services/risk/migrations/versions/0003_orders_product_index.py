"""orders: an index on (product_id, created_at), for the product burst rule's count of a
product's recent orders

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 07:00:00.000000
"""
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_product', ['product_id', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_product')
