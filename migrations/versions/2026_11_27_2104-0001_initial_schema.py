"""Initial schema: projects, hashed API tokens, runs, reports, per-tensor results, gradient statistics.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 21:04:19.363873
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Initial schema: projects, hashed tokens, runs and the queryable report tables.
    op.create_table('projects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_projects')),
    sa.UniqueConstraint('name', name=op.f('uq_projects_name'))
    )
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=True),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_api_tokens_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_project_id'), ['project_id'], unique=False)

    op.create_table('runs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('timeout_s', sa.Float(), nullable=False),
    sa.Column('model_name', sa.String(length=200), nullable=False),
    sa.Column('model_hash', sa.String(length=64), nullable=False),
    sa.Column('definition_kind', sa.String(length=8), nullable=False),
    sa.Column('definition', sa.Text(), nullable=False),
    sa.Column('options', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'), nullable=False),
    sa.Column('git_repo', sa.String(length=500), nullable=True),
    sa.Column('git_branch', sa.String(length=255), nullable=True),
    sa.Column('git_commit', sa.String(length=64), nullable=True),
    sa.Column('device', sa.String(length=8), nullable=False),
    sa.Column('queue', sa.String(length=16), nullable=False),
    sa.Column('worker_host', sa.String(length=255), nullable=True),
    sa.Column('claim', sa.String(length=32), nullable=True),
    sa.Column('progress_stage', sa.String(length=64), nullable=True),
    sa.Column('progress', sa.Float(), nullable=True),
    sa.Column('error_code', sa.String(length=32), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('check_s', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_runs_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('ix_runs_project_branch_created', ['project_id', 'git_branch', 'created_at'], unique=False)
        batch_op.create_index('ix_runs_project_commit', ['project_id', 'git_commit'], unique=False)
        batch_op.create_index('ix_runs_project_created', ['project_id', 'created_at', 'id'], unique=False)
        batch_op.create_index('ix_runs_project_model_created', ['project_id', 'model_name', 'created_at'], unique=False)
        batch_op.create_index('ix_runs_project_status_created', ['project_id', 'status', 'created_at'], unique=False)
        batch_op.create_index('ix_runs_status_heartbeat', ['status', 'heartbeat_at'], unique=False)

    op.create_table('gradient_stats',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=500), nullable=False),
    sa.Column('depth', sa.Integer(), nullable=True),
    sa.Column('norm', sa.Float(), nullable=True),
    sa.Column('extra', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_gradient_stats_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_gradient_stats'))
    )
    with op.batch_alter_table('gradient_stats', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_gradient_stats_run_id'), ['run_id'], unique=False)

    op.create_table('run_labels',
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_labels_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'label', name=op.f('pk_run_labels'))
    )
    with op.batch_alter_table('run_labels', schema=None) as batch_op:
        batch_op.create_index('ix_run_labels_label_run', ['label', 'run_id'], unique=False)

    op.create_table('run_reports',
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('schema_version', sa.String(length=16), nullable=False),
    sa.Column('passed', sa.Boolean(), nullable=False),
    sa.Column('gradient_check_passed', sa.Boolean(), nullable=True),
    sa.Column('faulty_modules', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'), nullable=False),
    sa.Column('failed_because', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'), nullable=False),
    sa.Column('parameter_bytes', sa.BigInteger(), nullable=True),
    sa.Column('gradient_bytes', sa.BigInteger(), nullable=True),
    sa.Column('optimizer_bytes', sa.BigInteger(), nullable=True),
    sa.Column('activation_bytes', sa.BigInteger(), nullable=True),
    sa.Column('peak_bytes', sa.BigInteger(), nullable=True),
    sa.Column('total_gradient_norm', sa.Float(), nullable=True),
    sa.Column('diagnosis', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'), nullable=False),
    sa.Column('report', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_reports_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', name=op.f('pk_run_reports'))
    )
    op.create_table('tensor_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=500), nullable=False),
    sa.Column('passed', sa.Boolean(), nullable=False),
    sa.Column('max_abs_error', sa.Float(), nullable=True),
    sa.Column('max_rel_error', sa.Float(), nullable=True),
    sa.Column('coordinates_checked', sa.BigInteger(), nullable=False),
    sa.Column('numel', sa.BigInteger(), nullable=False),
    sa.Column('coverage', sa.String(length=16), nullable=True),
    sa.Column('unused', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_tensor_results_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tensor_results'))
    )
    with op.batch_alter_table('tensor_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tensor_results_run_id'), ['run_id'], unique=False)



def downgrade() -> None:
    # Initial schema: projects, hashed tokens, runs and the queryable report tables.
    with op.batch_alter_table('tensor_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tensor_results_run_id'))

    op.drop_table('tensor_results')
    op.drop_table('run_reports')
    with op.batch_alter_table('run_labels', schema=None) as batch_op:
        batch_op.drop_index('ix_run_labels_label_run')

    op.drop_table('run_labels')
    with op.batch_alter_table('gradient_stats', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_gradient_stats_run_id'))

    op.drop_table('gradient_stats')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_status_heartbeat')
        batch_op.drop_index('ix_runs_project_status_created')
        batch_op.drop_index('ix_runs_project_model_created')
        batch_op.drop_index('ix_runs_project_created')
        batch_op.drop_index('ix_runs_project_commit')
        batch_op.drop_index('ix_runs_project_branch_created')

    op.drop_table('runs')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_tokens_project_id'))

    op.drop_table('api_tokens')
    op.drop_table('projects')
