"""Repository archives: the files of a multi-file model per run, and the packages each worker provides.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('layout', JSON, nullable=True))
    op.create_table('run_files',
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('path', sa.String(length=500), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_files_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'path', name=op.f('pk_run_files'))
    )
    op.create_table('worker_environments',
    sa.Column('worker', sa.String(length=255), nullable=False),
    sa.Column('queues', JSON, nullable=False),
    sa.Column('python', sa.String(length=64), nullable=False),
    sa.Column('packages', JSON, nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('worker', name=op.f('pk_worker_environments'))
    )


def downgrade() -> None:
    op.drop_table('worker_environments')
    op.drop_table('run_files')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('layout')
