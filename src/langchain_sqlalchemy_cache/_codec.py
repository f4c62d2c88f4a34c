"""Encoding generations into row payloads and back, under an explicit allowlist.

Whoever can write the cache table controls what ``load`` is asked to build, so only
generation and message classes are admitted, secrets are never read from the
environment, and anything else makes the row a miss.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from langchain_core._api.beta_decorator import LangChainBetaWarning
from langchain_core.load import dumpd, load
from langchain_core.load.load import Reviver
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    ChatMessageChunk,
    FunctionMessage,
    FunctionMessageChunk,
    HumanMessage,
    HumanMessageChunk,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk

logger = logging.getLogger("langchain_sqlalchemy_cache")

ALLOWED_CLASSES: tuple[type[Any], ...] = (
    Generation,
    GenerationChunk,
    ChatGeneration,
    ChatGenerationChunk,
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    HumanMessageChunk,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
    ChatMessage,
    ChatMessageChunk,
    FunctionMessage,
    FunctionMessageChunk,
)

# `load` is marked beta and warns on every call; the allowlist we pass is the
# non-beta part of its contract, so the warning carries nothing for our users.
warnings.filterwarnings(
    "ignore", message="The function `load` is in beta", category=LangChainBetaWarning
)


def validate_generations(return_val: object) -> list[Generation]:
    """Return ``return_val`` as a list, or raise before anything touches the database.

    Raises:
        TypeError: ``return_val`` is not a sequence of ``Generation`` objects.
    """
    if isinstance(return_val, (str, bytes)) or not isinstance(return_val, Sequence):
        msg = (
            "return_val must be a sequence of langchain_core.outputs.Generation objects, "
            f"got {type(return_val).__name__}"
        )
        raise TypeError(msg)
    generations = list(return_val)
    for index, generation in enumerate(generations):
        if not isinstance(generation, Generation):
            msg = (
                f"return_val[{index}] is a {type(generation).__name__}, not a "
                "langchain_core.outputs.Generation: cache what the model returned"
            )
            raise TypeError(msg)
    return generations


def encode_text(text: str) -> str:
    """Encode a prompt or llm_string as an ASCII JSON string literal."""
    return json.dumps(text)


def encode_generations(generations: Sequence[Generation]) -> str:
    """Serialize generations as an ASCII JSON array (NUL and surrogates escaped)."""
    return json.dumps([dumpd(generation) for generation in generations])


# Building a Reviver computes the allowlist's class paths, which is most of the cost of
# `load` for a typical row; one instance, configured exactly as `load` would configure
# it, is stateless after construction and shared by every decode.
_REVIVER = Reviver(ALLOWED_CLASSES, None, None, False, None)
# dumpd wraps user data that looks like a serialized object in this key, and `load`
# unwraps it before reviving anything; a json object_hook would revive bottom-up and
# build what is inside the wrapper, so such payloads take the `load` path.
_ESCAPE_MARKER = "__lc_escaped__"


def _revive(payload: str) -> Any:
    if _ESCAPE_MARKER in payload:
        return load(json.loads(payload), allowed_objects=ALLOWED_CLASSES, secrets_from_env=False)
    return json.loads(payload, object_hook=_REVIVER)


def decode_generations(payload: str) -> list[Generation] | None:
    """Rebuild the generations of a row, or return None (a miss) if the row is unusable."""
    try:
        loaded = _revive(payload)
    except Exception as exc:  # any malformed or hostile row is a miss, never a crash
        logger.warning("cache row could not be loaded, treating it as a miss: %r", exc)
        return None
    if not isinstance(loaded, list) or not all(isinstance(g, Generation) for g in loaded):
        logger.warning(
            "cache row did not decode to a list of Generations (%s), treating it as a miss",
            type(loaded).__name__,
        )
        return None
    return loaded
