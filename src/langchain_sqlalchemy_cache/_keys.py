"""Cache keys: a fixed-length hash of (llm_string, prompt).

A hash keeps every key 64 ASCII characters long whatever the prompt, so no backend's
index-size limit applies and NUL or lone surrogates never reach an index.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

KEY_LENGTH = 64


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate is legal in a Python str and must still hash
    # to something distinct instead of raising UnicodeEncodeError.
    return text.encode("utf-8", "surrogatepass")


def cache_key(prompt: str, llm_string: str, namespace: str = "") -> str:
    """Return the hex SHA-256 key of one cache entry.

    The namespace and the llm_string are length-prefixed so that no split of the same
    characters between the arguments gives the same key.
    """
    digest = _prefix(namespace, llm_string).copy()
    digest.update(_utf8(prompt))
    return str(digest.hexdigest())


@functools.lru_cache(maxsize=256)
def _prefix(namespace: str, llm_string: str) -> Any:
    # The hash state after namespace and llm_string, which repeat from call to call (an
    # llm_string serializes the model and its settings: hundreds of characters).
    digest = hashlib.sha256()
    for part in (namespace, llm_string):
        data = _utf8(part)
        digest.update(b"%d:" % len(data))
        digest.update(data)
    return digest


def llm_key(llm_string: str) -> str:
    """Return the hex SHA-256 of an llm_string: which model wrote an entry."""
    return hashlib.sha256(_utf8(llm_string)).hexdigest()
