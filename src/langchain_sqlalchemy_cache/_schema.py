"""The cache table."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Column,
    Double,
    Float,
    Index,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

from ._identifiers import NAMESPACE_MAX_CHARS, index_name
from ._keys import KEY_LENGTH

DEFAULT_TABLE_NAME = "langchain_llm_cache"

# Bumped when the payload encoding changes, so that rows written by an older
# release can be told apart from new ones.
FORMAT_VERSION = 1

# MySQL's TEXT stops at 64 KiB; prompts and generations routinely exceed it.
_LONG_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
_LONG_BYTES = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
# MySQL's FLOAT is single precision: a UNIX time would lose minutes.
_TIMESTAMP = Float().with_variant(Double(), "mysql", "mariadb")
# utf8mb4 holds every character (MySQL's "utf8" only the first plane), and the binary
# collation makes namespaces compare exactly: "Team" and "team" are two namespaces.
_MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    f"{dialect}_{option}": setting
    for dialect in ("mysql", "mariadb")
    for option, setting in {
        "charset": "utf8mb4",
        "collate": "utf8mb4_bin",
        "engine": "InnoDB",
    }.items()
}


def cache_table(
    metadata: MetaData, table_name: str = DEFAULT_TABLE_NAME, schema: str | None = None
) -> Table:
    """Define the cache table on ``metadata`` and return it.

    Columns:
        key: hex SHA-256 of (namespace, llm_string, prompt), the primary key.
        namespace: the cache's namespace; ``clear()`` deletes only its own.
        llm_key: hex SHA-256 of the llm_string, so one model's entries can be cleared
            even when the text is not stored.
        prompt / llm_string: the inputs as JSON string literals (ASCII, so NUL and lone
            surrogates are storable everywhere); kept for inspection and maintenance.
        payload: the generations as a JSON array in UTF-8 bytes (see ``_codec``).
        updated_at: UNIX time of the last write.
        format: the payload format version.

    Indexes: (namespace, updated_at) for trims, purges and ``clear(older_than=)``;
    (namespace, llm_key) for ``clear(llm_string=)``. Their names are
    ``ix_<table>_<columns>``, shortened with a hash of the table name when that would
    not fit 63 bytes.
    """
    return Table(
        table_name,
        metadata,
        Column("key", String(KEY_LENGTH), primary_key=True),
        Column("namespace", String(NAMESPACE_MAX_CHARS), nullable=False, server_default=""),
        Column("llm_key", String(KEY_LENGTH), nullable=True),
        Column("prompt", _LONG_TEXT, nullable=True),
        Column("llm_string", _LONG_TEXT, nullable=True),
        Column("payload", _LONG_BYTES, nullable=False),
        Column("updated_at", _TIMESTAMP, nullable=False),
        Column("format", SmallInteger, nullable=False, default=FORMAT_VERSION),
        Index(index_name(table_name, "namespace_updated"), "namespace", "updated_at"),
        Index(index_name(table_name, "namespace_llm"), "namespace", "llm_key"),
        schema=schema,
        **_MYSQL_TABLE_OPTIONS,
    )
