"""A native-async LLM response cache for LangChain, backed by SQLAlchemy."""

import importlib.metadata as _metadata

from ._cache import SQLAlchemyCache
from ._errors import CacheError, ConfigurationError
from ._health import Health
from ._md5 import SQLAlchemyMd5Cache
from ._schema import cache_table
from ._sqlite import SQLiteCache
from ._stats import CacheStats, ModelEntries, TableStats

__all__ = [
    "CacheError",
    "CacheStats",
    "ConfigurationError",
    "Health",
    "ModelEntries",
    "SQLAlchemyCache",
    "SQLAlchemyMd5Cache",
    "SQLiteCache",
    "TableStats",
    "cache_table",
]

try:
    __version__ = _metadata.version("langchain-sqlalchemy-cache")
except _metadata.PackageNotFoundError:  # pragma: no cover - imported from an uninstalled tree
    __version__ = "0+unknown"
