"""Cache keys: a fixed-length hash of (llm_string, prompt).

A hash keeps every key 64 ASCII characters long whatever the prompt, so no backend's
index-size limit applies and NUL or lone surrogates never reach an index.
"""

from __future__ import annotations

import hashlib

KEY_LENGTH = 64


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate is legal in a Python str and must still hash
    # to something distinct instead of raising UnicodeEncodeError.
    return text.encode("utf-8", "surrogatepass")


def cache_key(prompt: str, llm_string: str) -> str:
    """Return the hex SHA-256 key of one cache entry.

    The llm_string is length-prefixed so that no split of the same characters
    between the two arguments gives the same key.
    """
    llm = _utf8(llm_string)
    digest = hashlib.sha256(b"%d:" % len(llm))
    digest.update(llm)
    digest.update(_utf8(prompt))
    return digest.hexdigest()
