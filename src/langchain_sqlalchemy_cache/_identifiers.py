"""Which table, schema and namespace names each backend can hold, checked up front.

A name the backend cannot hold must fail when the cache is made, with a sentence
saying what is allowed, rather than on every call later: PostgreSQL silently
truncates an identifier longer than 63 bytes (the table is then never found under
its full name), MySQL refuses more than 64 characters, and no driver can send a lone
surrogate. Index names are derived from the table name so they always fit.
"""

from __future__ import annotations

import hashlib

from ._errors import ConfigurationError

# PostgreSQL: NAMEDATALEN - 1 bytes (UTF-8). MySQL/MariaDB: 64 characters.
POSTGRES_MAX_IDENTIFIER_BYTES = 63
MYSQL_MAX_IDENTIFIER_CHARS = 64
# The namespace column is VARCHAR(255) on every backend.
NAMESPACE_MAX_CHARS = 255
# Every derived index name fits the strictest backend (PostgreSQL's 63 bytes), so the
# same table definition works everywhere (Alembic included).
INDEX_NAME_MAX_BYTES = POSTGRES_MAX_IDENTIFIER_BYTES
_HASH_CHARS = 8


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _identifier_problem(name: str, dialect_name: str) -> str | None:
    """Why ``dialect_name`` cannot hold the identifier ``name``, or None if it can."""
    if "\x00" in name:
        return "it holds a NUL character"
    if _lone_surrogate(name):
        return "it holds a lone surrogate (not valid Unicode text)"
    if dialect_name == "postgresql":
        size = len(name.encode("utf-8"))
        if size > POSTGRES_MAX_IDENTIFIER_BYTES:
            return (
                f"it is {size} bytes long in UTF-8 and PostgreSQL identifiers hold at most "
                f"{POSTGRES_MAX_IDENTIFIER_BYTES}"
            )
    elif dialect_name in ("mysql", "mariadb"):
        if len(name) > MYSQL_MAX_IDENTIFIER_CHARS:
            return (
                f"it is {len(name)} characters long and MySQL/MariaDB identifiers hold at "
                f"most {MYSQL_MAX_IDENTIFIER_CHARS}"
            )
        if any(ord(char) > 0xFFFF for char in name):
            return "MySQL/MariaDB identifiers cannot hold characters beyond U+FFFF (emoji)"
        if name.endswith(" "):
            return "MySQL/MariaDB identifiers cannot end with a space"
    return None


def _allowed(dialect_name: str) -> str:
    if dialect_name == "postgresql":
        return f"at most {POSTGRES_MAX_IDENTIFIER_BYTES} bytes of UTF-8, without NUL"
    if dialect_name in ("mysql", "mariadb"):
        return (
            f"at most {MYSQL_MAX_IDENTIFIER_CHARS} characters up to U+FFFF, without NUL "
            "and not ending with a space"
        )
    return "any text without NUL"


def check_identifier(argument: str, name: str, dialect_name: str) -> str:
    """Return ``name`` if the backend can hold it as a table or schema name.

    Raises:
        ConfigurationError: It cannot; the message says what is allowed.
    """
    problem = _identifier_problem(name, dialect_name)
    if problem is not None:
        msg = (
            f"{argument} {name!r} cannot be used on {dialect_name}: {problem}; pass a name of "
            f"{_allowed(dialect_name)}, and no lone surrogates"
        )
        raise ConfigurationError(msg)
    return name


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` if every backend can store it.

    NUL is refused everywhere, not only where PostgreSQL refuses it, so that a namespace
    means the same on every backend (``migrate`` copies between them).

    Raises:
        ConfigurationError: It is not a str the namespace column can hold.
    """
    if not isinstance(namespace, str):
        msg = f"namespace must be a str, got {type(namespace).__name__}"
        raise ConfigurationError(msg)
    problem = None
    if len(namespace) > NAMESPACE_MAX_CHARS:
        problem = f"it is {len(namespace)} characters long"
    elif "\x00" in namespace:
        problem = "it holds a NUL character"
    elif _lone_surrogate(namespace):
        problem = "it holds a lone surrogate (not valid Unicode text)"
    if problem is not None:
        shown = repr(namespace) if len(namespace) <= 60 else repr(namespace[:57]) + "..."
        msg = (
            f"namespace must be a str of at most {NAMESPACE_MAX_CHARS} characters without "
            f"NUL or lone surrogates, got {shown}: {problem}"
        )
        raise ConfigurationError(msg)
    return namespace


def index_name(table_name: str, suffix: str) -> str:
    """The name of the table's index ``suffix``: ``ix_<table>_<suffix>`` when it fits.

    A longer one keeps as much of the table name as fits, then a hash of the whole
    name, so two long table names sharing a prefix still get distinct index names.
    """
    name = f"ix_{table_name}_{suffix}"
    if len(name.encode("utf-8", "surrogatepass")) <= INDEX_NAME_MAX_BYTES:
        return name
    digest = hashlib.sha256(table_name.encode("utf-8", "surrogatepass")).hexdigest()
    tail = f"_{digest[:_HASH_CHARS]}_{suffix}"
    room = INDEX_NAME_MAX_BYTES - len("ix_") - len(tail)
    head = table_name.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
    return f"ix_{head}{tail}"
