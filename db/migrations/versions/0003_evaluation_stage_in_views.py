"""Views carry each evaluation's own stage (base, trained, probe_screen, probe_round_N), not a fixed 'trained'.

A run's own evaluations were all 'trained' until the hint probe recorded several per run (one per round);
existing rows read exactly as before.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

AXES = "r.sweep, r.richness, r.coverage, r.model, r.objective, r.seed, r.status"
RUN_EVALUATIONS = """
        SELECT id AS run_id, base_evaluation_id AS evaluation_id, 'base' AS stage FROM runs
        WHERE base_evaluation_id IS NOT NULL
        UNION ALL
        SELECT run_id, id AS evaluation_id, {stage} AS stage FROM evaluations WHERE run_id IS NOT NULL"""
# Copied from 0002 (a migration is a frozen snapshot): the views that read run_evaluations.
DEPENDENT = {
    "run_metrics": f"""
        SELECT r.id AS run_id, {AXES}, re.stage, m.eval_set, m.name AS metric, m.value
        FROM runs r JOIN run_evaluations re ON re.run_id = r.id JOIN metrics m ON m.evaluation_id = re.evaluation_id""",
    "run_samples": f"""
        SELECT r.id AS run_id, {AXES}, re.stage, s.eval_set, s.problem_id, s.sample_idx, s.correct, s.exact_match,
               s.length, s.markers, s.marker_counts, s.completion
        FROM runs r JOIN run_evaluations re ON re.run_id = r.id JOIN samples s ON s.evaluation_id = re.evaluation_id""",
}


def _recreate(stage: str) -> None:
    # PostgreSQL refuses to drop a view that others depend on: drop the dependents first, then rebuild all.
    for name in DEPENDENT:
        op.execute(f"DROP VIEW {name}")
    op.execute("DROP VIEW run_evaluations")
    op.execute(f"CREATE VIEW run_evaluations AS {RUN_EVALUATIONS.format(stage=stage)}")
    for name, sql in DEPENDENT.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def upgrade() -> None:
    _recreate("stage")


def downgrade() -> None:
    _recreate("'trained'")
