"""runs.study and runs.trial: a search trial's Optuna study and trial number (runs.kind 'trial', ablate/search.py).

Existing rows are no trials: both columns stay NULL. The study itself lives in Optuna's own storage beside the
results (docs/search.md), never in these tables.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("study", sa.String(255)))
    op.add_column("runs", sa.Column("trial", sa.Integer))
    op.create_index("ix_runs_study", "runs", ["study"])


def downgrade() -> None:
    op.drop_index("ix_runs_study", "runs")
    # A plain DROP COLUMN (SQLite >= 3.35): a batch table copy would trip over the views that read runs.
    op.execute("ALTER TABLE runs DROP COLUMN trial")
    op.execute("ALTER TABLE runs DROP COLUMN study")
