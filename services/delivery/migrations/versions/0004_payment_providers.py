"""payments: order's pay type, payment ref and last check; refunds through the provider

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 08:57:10.774089
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pay_type', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('payment_ref', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('payment_checked_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('refund_no', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('provider', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('status', sa.String(length=16), server_default='not_needed', nullable=False))  # refunds before providers: nothing was sent
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_error', sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column('refused', sa.Boolean(), server_default=sa.text('false'), nullable=False))
        batch_op.add_column(sa.Column('provider_refund_id', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_refunds_due', ['next_attempt_at'], unique=False, postgresql_where=sa.text("status = 'requested'"), sqlite_where=sa.text("status = 'requested'"))
        batch_op.create_unique_constraint('uq_refunds_refund_no', ['refund_no'])



def downgrade() -> None:
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.drop_constraint('uq_refunds_refund_no', type_='unique')
        batch_op.drop_index('ix_refunds_due', postgresql_where=sa.text("status = 'requested'"), sqlite_where=sa.text("status = 'requested'"))
        batch_op.drop_column('settled_at')
        batch_op.drop_column('provider_refund_id')
        batch_op.drop_column('refused')
        batch_op.drop_column('last_error')
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('attempts')
        batch_op.drop_column('status')
        batch_op.drop_column('provider')
        batch_op.drop_column('refund_no')

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('payment_checked_at')
        batch_op.drop_column('payment_ref')
        batch_op.drop_column('pay_type')

