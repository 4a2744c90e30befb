"""withdrawals: paid out by Alipay's transfer or an exported batch (sending, failed)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 09:12:09.573255
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('withdrawals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('payee_name', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('method', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('batch_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('external_ref', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('last_error', sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('failed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_withdrawals_batch', ['batch_id'], unique=False)
    # Until now only the sandbox paid withdrawals out.
    withdrawals = sa.table('withdrawals', sa.column('status', sa.String()), sa.column('method', sa.String()))
    op.execute(withdrawals.update().where(withdrawals.c.status == 'paid').values(method='sandbox'))


def downgrade() -> None:
    with op.batch_alter_table('withdrawals', schema=None) as batch_op:
        batch_op.drop_index('ix_withdrawals_batch')
        batch_op.drop_column('failed_at')
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('sent_at')
        batch_op.drop_column('last_error')
        batch_op.drop_column('attempts')
        batch_op.drop_column('external_ref')
        batch_op.drop_column('batch_id')
        batch_op.drop_column('method')
        batch_op.drop_column('payee_name')
