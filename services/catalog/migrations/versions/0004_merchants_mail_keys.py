"""merchants: mail_keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 10:18:07.754476
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing merchants keep what every e-mail does by default: carry the keys.
    with op.batch_alter_table('merchants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mail_keys', sa.Boolean(), server_default=sa.text('true'), nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('merchants', schema=None) as batch_op:
        batch_op.drop_column('mail_keys')

