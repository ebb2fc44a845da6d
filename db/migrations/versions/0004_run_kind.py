"""runs.kind: what a run is (cell, build, probe; next, search trials), no longer hidden in runs.objective.

Until 0003 a model build was recorded as objective 'build' and a hint probe as objective 'probe'. Those rows get
kind build/probe and objective '-'; every other row is a cell. The views gain the kind column.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

RUN_EVALUATIONS = """
        SELECT id AS run_id, base_evaluation_id AS evaluation_id, 'base' AS stage FROM runs
        WHERE base_evaluation_id IS NOT NULL
        UNION ALL
        SELECT run_id, id AS evaluation_id, stage FROM evaluations WHERE run_id IS NOT NULL"""


def _views(axes: str) -> dict[str, str]:
    # A frozen copy of 0002/0003's views with `axes` as the run columns.
    return {
        "run_metrics": f"""
        SELECT r.id AS run_id, {axes}, re.stage, m.eval_set, m.name AS metric, m.value
        FROM runs r JOIN run_evaluations re ON re.run_id = r.id JOIN metrics m ON m.evaluation_id = re.evaluation_id""",
        "run_samples": f"""
        SELECT r.id AS run_id, {axes}, re.stage, s.eval_set, s.problem_id, s.sample_idx, s.correct, s.exact_match,
               s.length, s.markers, s.marker_counts, s.completion
        FROM runs r JOIN run_evaluations re ON re.run_id = r.id JOIN samples s ON s.evaluation_id = re.evaluation_id""",
        "run_steps": f"""
        SELECT r.id AS run_id, {axes}, t.step, t.name AS metric, t.value
        FROM runs r JOIN train_steps t ON t.run_id = r.id""",
    }


OLD = "r.sweep, r.richness, r.coverage, r.model, r.objective, r.seed, r.status"
NEW = "r.sweep, r.kind, r.richness, r.coverage, r.model, r.objective, r.seed, r.status"


def _recreate(axes: str) -> None:
    for name in _views(axes):
        op.execute(f"DROP VIEW {name}")
    for name, sql in _views(axes).items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def upgrade() -> None:
    for name in _views(OLD):  # views read runs: drop them before the table changes
        op.execute(f"DROP VIEW {name}")
    op.add_column("runs", sa.Column("kind", sa.String(16), nullable=False, server_default="cell"))
    op.create_index("ix_runs_kind", "runs", ["kind"])
    for kind in ("build", "probe"):
        op.execute(f"UPDATE runs SET kind = '{kind}', objective = '-' WHERE objective = '{kind}'")
    for name, sql in _views(NEW).items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in _views(NEW):
        op.execute(f"DROP VIEW {name}")
    for kind in ("build", "probe"):
        op.execute(f"UPDATE runs SET objective = '{kind}' WHERE kind = '{kind}'")
    op.drop_index("ix_runs_kind", "runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("kind")
    for name, sql in _views(OLD).items():
        op.execute(f"CREATE VIEW {name} AS {sql}")
