"""LangChain's own standard cache tests, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from langchain_tests.integration_tests import AsyncCacheTestSuite, SyncCacheTestSuite

from langchain_sqlalchemy_cache import SQLAlchemyCache

from .conftest import CacheFactory


class TestSyncSuite(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, make_cache: CacheFactory) -> SQLAlchemyCache:
        return make_cache()


class TestAsyncSuite(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, make_cache: CacheFactory) -> AsyncIterator[SQLAlchemyCache]:
        cache = make_cache()
        yield cache
        await cache.aclose()
