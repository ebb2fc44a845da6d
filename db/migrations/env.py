"""Alembic environment: runs ablate's migrations on the connection ablate hands it (or on -x url=...)."""

from alembic import context

from ablate import record

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with record.engine(url).connect() as connection:
        context.configure(connection=connection, target_metadata=record.Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
else:
    context.configure(connection=connection, target_metadata=record.Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
