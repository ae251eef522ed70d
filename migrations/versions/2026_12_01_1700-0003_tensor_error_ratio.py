"""Each checked tensor's error in units of its own tolerance (tensor_results.max_error_ratio).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: rows of reports written before the ratio existed have none.
    with op.batch_alter_table('tensor_results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_error_ratio', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tensor_results', schema=None) as batch_op:
        batch_op.drop_column('max_error_ratio')
