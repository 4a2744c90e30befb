"""merchant binding rule: how long a referral binding made in the merchant's shop holds

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
    # Existing merchants get the default every binding had until now: permanent.
    with op.batch_alter_table('merchants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('binding_mode', sa.String(length=16), server_default='permanent',
                                      nullable=False))
        batch_op.add_column(sa.Column('binding_lock_days', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('merchants', schema=None) as batch_op:
        batch_op.drop_column('binding_lock_days')
        batch_op.drop_column('binding_mode')
