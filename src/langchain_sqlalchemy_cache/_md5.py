"""SQLAlchemyMd5Cache: the drop-in for ``langchain_community.cache.SQLAlchemyMd5Cache``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from ._cache import SQLAlchemyCache


class SQLAlchemyMd5Cache(SQLAlchemyCache):
    """``SQLAlchemyCache`` under the name and signature of community's MD5 cache.

    Community's MD5 variant indexed prompts by their MD5; this cache keys every entry
    by a SHA-256 of (namespace, llm_string, prompt) already, so both names are one cache.
    Entries of community's ``full_md5_llm_cache`` table are copied over with
    ``langchain-sqlalchemy-cache migrate URL --from-table full_md5_llm_cache``.

    Example:
        .. code-block:: python

            from langchain_core.globals import set_llm_cache
            from langchain_sqlalchemy_cache import SQLAlchemyMd5Cache

            set_llm_cache(SQLAlchemyMd5Cache(engine))
    """

    def __init__(
        self,
        engine: str | URL | AsyncEngine | Engine,
        cache_schema: type[Any] | None = None,
        **options: Any,
    ) -> None:
        """Open a cache on ``engine``; see ``SQLAlchemyCache`` for the options.

        Args:
            engine: A database URL, an ``AsyncEngine`` or a sync ``Engine``.
            cache_schema: Community's ``FullMd5LLMCache`` (or ``FullLLMCache``) is
                accepted and ignored; any other class raises ``ConfigurationError``.
            **options: Any keyword option of ``SQLAlchemyCache``.

        Raises:
            ConfigurationError: See ``SQLAlchemyCache``.
        """
        super().__init__(engine, cache_schema, **options)
