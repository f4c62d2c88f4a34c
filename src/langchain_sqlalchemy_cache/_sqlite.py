"""SQLiteCache: the drop-in for ``langchain_community.cache.SQLiteCache``."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import URL

from ._cache import SQLAlchemyCache
from ._errors import ConfigurationError
from ._schema import DEFAULT_TABLE_NAME


class SQLiteCache(SQLAlchemyCache):
    """A cache in a SQLite file, with aiosqlite for async calls and sqlite3 for sync ones.

    Example:
        .. code-block:: python

            from langchain_core.globals import set_llm_cache
            from langchain_sqlalchemy_cache import SQLiteCache

            set_llm_cache(SQLiteCache(database_path=".langchain.db"))
    """

    def __init__(
        self,
        database_path: str | os.PathLike[str] = ".langchain.db",
        *,
        table_name: str = DEFAULT_TABLE_NAME,
        create_table: bool = True,
        **options: Any,
    ) -> None:
        """Open (and create if needed) the SQLite file at ``database_path``.

        Args:
            database_path: Path of the database file.
            table_name: Name of the cache table.
            create_table: Create the table (if missing) before first use.
            **options: Any other keyword option of ``SQLAlchemyCache`` (``ttl``,
                ``on_error``, ``coalesce``, ...).

        Raises:
            ConfigurationError: The path is ``:memory:`` or empty (see the message for
                why and what to use instead).
        """
        path = os.fspath(database_path)
        if not isinstance(path, str):
            msg = f"database_path must be a str or path, got {type(database_path).__name__}"
            raise ConfigurationError(msg)
        url = URL.create("sqlite", database=path)
        super().__init__(url, table_name=table_name, create_table=create_table, **options)
