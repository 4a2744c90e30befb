"""merchant binding rule: the shop a binding belongs to, and each merchant's rule

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 06:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing merchants were permanent (the old default) and existing bindings were made
    # outside any shop, so they keep following the operator's rule: nothing changes for them.
    with op.batch_alter_table('merchants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('binding_mode', sa.String(length=16), server_default='permanent',
                                      nullable=False))
        batch_op.add_column(sa.Column('binding_lock_days', sa.Integer(), nullable=True))
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bound_merchant_id', sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('bound_merchant_id')
    with op.batch_alter_table('merchants', schema=None) as batch_op:
        batch_op.drop_column('binding_lock_days')
        batch_op.drop_column('binding_mode')
