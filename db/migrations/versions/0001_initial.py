"""The first schema: runs, evaluations, samples, metrics, train_steps.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sweep", sa.String(255), nullable=False, index=True),
        sa.Column("config_hash", sa.String(64), nullable=False, index=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("richness", sa.String(64), nullable=False),
        sa.Column("coverage", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("objective", sa.String(64), nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("git_commit", sa.String(64)),
        sa.Column("git_dirty", sa.Boolean),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("ended_at", sa.DateTime),
        sa.Column("error", sa.Text),
        sa.Column("base_evaluation_id", sa.Integer),  # FK added below: runs and evaluations reference each other
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("key", sa.String(64), unique=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), index=True),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    with op.batch_alter_table("runs") as batch:
        batch.create_foreign_key("fk_runs_base_evaluation", "evaluations", ["base_evaluation_id"], ["id"])
    op.create_table(
        "samples",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("evaluation_id", sa.Integer, sa.ForeignKey("evaluations.id"), nullable=False, index=True),
        sa.Column("eval_set", sa.String(64), nullable=False),
        sa.Column("problem_id", sa.String(255), nullable=False),
        sa.Column("sample_idx", sa.Integer, nullable=False),
        sa.Column("completion", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("correct", sa.Boolean, nullable=False),
        sa.Column("exact_match", sa.Boolean, nullable=False),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("markers", sa.Integer, nullable=False),
        sa.Column("marker_counts", sa.JSON, nullable=False),
    )
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("evaluation_id", sa.Integer, sa.ForeignKey("evaluations.id"), nullable=False, index=True),
        sa.Column("eval_set", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.Float),
    )
    op.create_table(
        "train_steps",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.Float),
    )


def downgrade() -> None:
    for table in ("train_steps", "metrics", "samples"):
        op.drop_table(table)
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("fk_runs_base_evaluation", type_="foreignkey")
    op.drop_table("evaluations")
    op.drop_table("runs")
