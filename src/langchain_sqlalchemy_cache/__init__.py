"""A native-async LLM response cache for LangChain, backed by SQLAlchemy."""

from ._cache import SQLAlchemyCache
from ._errors import CacheError, ConfigurationError
from ._schema import cache_table
from ._sqlite import SQLiteCache

__all__ = ["CacheError", "ConfigurationError", "SQLAlchemyCache", "SQLiteCache", "cache_table"]
