"""Inconclusive runs: a status of their own (it was stored as failed) and their reasons next to failed_because.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 02:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')
runs = sa.table('runs', sa.column('id', sa.String), sa.column('status', sa.String))
run_reports = sa.table('run_reports', sa.column('run_id', sa.String), sa.column('report', JSON),
                       sa.column('inconclusive_because', JSON))


def upgrade() -> None:
    with op.batch_alter_table('run_reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('inconclusive_because', JSON, nullable=True))
    # Each stored report says its verdict: copy its reasons, and give a run whose verdict is inconclusive (stored
    # as failed until now) its own status.
    connection = op.get_bind()
    inconclusive = []
    for run_id, report in connection.execute(sa.select(run_reports.c.run_id, run_reports.c.report)).all():
        reasons = list((report or {}).get('inconclusive_because') or [])
        connection.execute(run_reports.update().where(run_reports.c.run_id == run_id)
                           .values(inconclusive_because=reasons))
        if (report or {}).get('verdict') == 'inconclusive':
            inconclusive.append(run_id)
    for start in range(0, len(inconclusive), 500):
        connection.execute(runs.update().where(runs.c.id.in_(inconclusive[start:start + 500]),
                                               runs.c.status == 'failed').values(status='inconclusive'))
    with op.batch_alter_table('run_reports', schema=None) as batch_op:
        batch_op.alter_column('inconclusive_because', existing_type=JSON, nullable=False)


def downgrade() -> None:
    # Before this revision an inconclusive run was stored as failed (its report still says inconclusive).
    op.execute(runs.update().where(runs.c.status == 'inconclusive').values(status='failed'))
    with op.batch_alter_table('run_reports', schema=None) as batch_op:
        batch_op.drop_column('inconclusive_because')
