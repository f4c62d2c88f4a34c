"""Alembic's ``env.py`` for an application whose migrations own the LLM cache's table.

This is the ``env.py`` that ``alembic init`` writes, with three lines added (marked
"LLM cache"): the cache's table joins the metadata that autogenerate compares with the
database, so ``alembic revision --autogenerate`` writes its ``CREATE TABLE`` and indexes
into your migrations. The application then opens the cache without creating anything:

    SQLAlchemyCache(url, create_table=False)

with the same ``table_name`` / ``schema`` as given to ``cache_table`` below.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import MetaData, engine_from_config, pool

from langchain_sqlalchemy_cache import cache_table  # LLM cache

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name)

# Your models' metadata: e.g. ``from myapp.models import Base`` and ``Base.metadata``.
target_metadata = MetaData()
# LLM cache: its table (default name "langchain_llm_cache"), in your migrations.
cache_table(target_metadata)


def run_migrations_offline() -> None:
    """Write the migrations' SQL to stdout (``alembic upgrade head --sql``)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the database of ``sqlalchemy.url``."""
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
