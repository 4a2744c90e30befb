"""storefront: order locale, key reports

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:09:07.188256
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('key_reports',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('order_no', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=40), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['key_id'], ['card_keys.id'], ),
    sa.ForeignKeyConstraint(['order_no'], ['orders.order_no'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('key_reports', schema=None) as batch_op:
        batch_op.create_index('ix_key_reports_merchant_open', ['merchant_id', 'created_at'], unique=False, postgresql_where=sa.text("status = 'open'"), sqlite_where=sa.text("status = 'open'"))
        batch_op.create_index('ix_key_reports_order', ['order_no', 'position'], unique=False)

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('locale', sa.String(length=8), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('locale')

    with op.batch_alter_table('key_reports', schema=None) as batch_op:
        batch_op.drop_index('ix_key_reports_order')
        batch_op.drop_index('ix_key_reports_merchant_open', postgresql_where=sa.text("status = 'open'"), sqlite_where=sa.text("status = 'open'"))

    op.drop_table('key_reports')
