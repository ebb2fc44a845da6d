"""Heartbeats for running cells (stale-run detection) and query views.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

AXES = "r.sweep, r.richness, r.coverage, r.model, r.objective, r.seed, r.status"
VIEWS = {
    # Each run with its two evaluations: the shared base evaluation and its own trained one.
    "run_evaluations": """
        SELECT id AS run_id, base_evaluation_id AS evaluation_id, 'base' AS stage FROM runs
        WHERE base_evaluation_id IS NOT NULL
        UNION ALL
        SELECT run_id, id AS evaluation_id, 'trained' AS stage FROM evaluations WHERE run_id IS NOT NULL""",
    # Aggregates with the run's axes: one row per run x stage x eval set x metric.
    "run_metrics": f"""
        SELECT r.id AS run_id, {AXES}, re.stage, m.eval_set, m.name AS metric, m.value
        FROM runs r JOIN run_evaluations re ON re.run_id = r.id JOIN metrics m ON m.evaluation_id = re.evaluation_id""",
    # Per-sample records with the run's axes.
    "run_samples": f"""
        SELECT r.id AS run_id, {AXES}, re.stage, s.eval_set, s.problem_id, s.sample_idx, s.correct, s.exact_match,
               s.length, s.markers, s.marker_counts, s.completion
        FROM runs r JOIN run_evaluations re ON re.run_id = r.id JOIN samples s ON s.evaluation_id = re.evaluation_id""",
    # Training curves with the run's axes.
    "run_steps": f"""
        SELECT r.id AS run_id, {AXES}, t.step, t.name AS metric, t.value
        FROM runs r JOIN train_steps t ON t.run_id = r.id""",
}


def upgrade() -> None:
    op.add_column("runs", sa.Column("heartbeat_at", sa.DateTime))
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("heartbeat_at")
