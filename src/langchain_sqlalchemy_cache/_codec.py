"""Encoding generations into row payloads and back, under an explicit allowlist.

A payload is a JSON array, stored as UTF-8 bytes, with one entry per generation:
``{"class": "ChatGeneration", "fields": {...}, "message": {"class": "AIMessage",
"fields": {...}}}`` (``message`` only for chat generations). Decoding builds nothing
but the classes named in the two allowlists below, validated by their own pydantic
models; every other value in a row is plain JSON data. Whoever can write the table
therefore cannot make the cache build arbitrary objects, and no secret is ever read
from the environment. A row that does not decode is a miss, never an exception.

langchain_core's ``dumpd``/``load`` would also do, but cost ~170 us and ~40 us per chat
generation against ~25 us and ~30 us here, and a cache hit is mostly decoding. Two things
keep the decode lean, each measured on the benchmark's ~2 KB chat generation (37 -> ~30
us): orjson parses the JSON (3.8 us against 10 for ``json``) where it gives the same
values, and each class is built by its constructor, which validates exactly as
``model_validate`` does without its second pass through langchain's ``__init__``.

The in-process tier goes further (``freeze``/``thaw``): once a payload has been decoded and
validated, it keeps a pickle of the objects, which reads back in about half the time.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from typing import Any

from langchain_core import messages
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk

from ._ratelimit import RateLimitedLog

try:  # langsmith (so langchain-core) installs it on CPython
    import orjson
except ImportError:  # pragma: no cover - PyPy, or an install without it
    orjson = None  # type: ignore[assignment]

_UNLIMITED = RateLimitedLog(interval=0.0)

GENERATION_CLASSES: dict[str, type[Generation]] = {
    cls.__name__: cls for cls in (Generation, GenerationChunk, ChatGeneration, ChatGenerationChunk)
}
MESSAGE_CLASSES: dict[str, type[BaseMessage]] = {
    name: getattr(messages, name)
    for kind in ("AI", "Human", "System", "Tool", "Chat", "Function")
    for name in (f"{kind}Message", f"{kind}MessageChunk")
}


# How deep a stored payload may nest (the generation's own wrappers included). Every
# supported interpreter reads this back from a deep call stack; past it, what one Python
# writes another may not read (3.13 encodes 5,000 levels, 3.11 stops near 1,000), so the
# limit is the library's, not the interpreter's.
MAX_NESTING = 500


class UncacheableError(ValueError):
    """A well-formed generation whose content cannot be stored faithfully."""


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


def decode_text(stored: str | None) -> str | None:
    """The prompt or llm_string kept by ``encode_text`` (None when it was not stored)."""
    return None if stored is None else str(json.loads(stored))


def _allowed_name(obj: object, allowlist: dict[str, type[Any]]) -> str:
    name = type(obj).__name__
    if allowlist.get(name) is not type(obj):
        msg = f"{type(obj).__qualname__} is not one of the cacheable classes {sorted(allowlist)}"
        raise UncacheableError(msg)
    return name


def _entry(generation: Generation) -> dict[str, Any]:
    name = _allowed_name(generation, GENERATION_CLASSES)
    if not isinstance(generation, ChatGeneration):
        return {"class": name, "fields": generation.model_dump()}
    message = generation.message
    return {
        "class": name,
        # ChatGeneration derives its text from the message: store the text once.
        "fields": generation.model_dump(exclude={"message", "text"}),
        "message": {
            "class": _allowed_name(message, MESSAGE_CLASSES),
            "fields": message.model_dump(),
        },
    }


def encode_generations(generations: Sequence[Generation]) -> bytes:
    """Serialize generations as a JSON array in UTF-8 bytes.

    Bytes, not text: a str may hold lone surrogates, which no text column stores, and
    JSON's ``uXXXX`` escapes cannot carry them either (a decoder joins an escaped high
    and low surrogate into one character). Written unescaped with ``surrogatepass``,
    every str comes back exactly. JSON escapes NUL itself.

    Raises:
        UncacheableError: A generation is of a class outside the allowlist, holds a
            value JSON cannot represent (a datetime, a custom object), or nests deeper
            than ``MAX_NESTING`` levels.
    """
    entries = [_entry(generation) for generation in generations]
    try:
        text = json.dumps(entries, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UncacheableError(f"the generations hold a value JSON cannot store: {exc}") from exc
    except RecursionError as exc:
        raise UncacheableError(_too_deep()) from exc
    # Counting brackets is a C-speed upper bound on the depth: the walk runs only for
    # payloads that could be too deep.
    if text.count("[") + text.count("{") > MAX_NESTING and _nesting(entries) > MAX_NESTING:
        raise UncacheableError(_too_deep())
    return text.encode("utf-8", "surrogatepass")


def _too_deep() -> str:
    return f"the generations nest more than {MAX_NESTING} levels deep, the most the cache stores"


def _nesting(value: Any) -> int:
    """How deep lists and dicts nest in ``value``; a loop, since recursion is what fails."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in item)
    return deepest


def _fields(container: dict[str, Any]) -> dict[str, Any]:
    fields = container["fields"]
    if not isinstance(fields, dict):
        msg = f"fields must be an object, got {type(fields).__name__}"
        raise TypeError(msg)
    return fields


def _decode_entry(entry: Any) -> Generation:
    cls = GENERATION_CLASSES[entry["class"]]
    fields = _fields(entry)
    if issubclass(cls, ChatGeneration):
        message = entry["message"]
        message_cls = MESSAGE_CLASSES[message["class"]]
        fields = {**fields, "message": message_cls(**_fields(message))}
    return cls(**fields)


# Byte -> b"0" for an ASCII digit, b" " for anything else: a run of 19 digits in the
# translated payload may be an integer past 64 bits, which orjson reads as a float.
_DIGITS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_LONG_RUN = b"0" * 19


def _parse(payload: bytes | memoryview | str) -> Any:
    """The JSON value of ``payload``, exactly as ``json`` reads it.

    orjson reads it when it can say the same: it refuses (and ``json`` then reads) what
    it does not take, lone surrogates, NaN and out-of-range floats among them, and it
    is not asked when the payload holds 19 digits in a row, since it turns integers
    past 64 bits into floats where ``json`` keeps them whole.
    """
    if isinstance(payload, str):
        return json.loads(payload)
    data = payload if isinstance(payload, bytes) else bytes(payload)  # a driver's memoryview
    if orjson is not None and _LONG_RUN not in data.translate(_DIGITS):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data.decode("utf-8", "surrogatepass"))


def decode_generations(
    payload: bytes | str, log: RateLimitedLog | None = None
) -> list[Generation] | None:
    """Rebuild the generations of a row, or return None (a miss) if the row is unusable.

    The warning about an unusable row goes through ``log`` when given (the cache's
    rate-limited one: whoever can write the table must not flood the log).
    """
    try:
        entries = _parse(payload)
        if not isinstance(entries, list):
            msg = f"a payload is a JSON array, got {type(entries).__name__}"
            raise TypeError(msg)
        return [_decode_entry(entry) for entry in entries]
    except Exception as exc:  # any malformed or hostile row is a miss, never a crash
        (log or _UNLIMITED).warning(
            "unreadable row",
            "cache row could not be loaded, treating it as a miss: %s: %.200s",
            type(exc).__name__,
            exc,
        )
        return None


def freeze(generations: list[Generation]) -> bytes | None:
    """A snapshot of generations ``decode_generations`` built, for the in-process tier.

    A pickle: bytes, so every hit still gets objects of its own, and reading it back
    (``thaw``) skips the JSON parse and the validation, which these objects already
    passed: 9 against 16 us for a short chat answer, 11 against 23 for 2 KB. Snapshots
    are made only here, held only in this process's memory and read back only by
    ``thaw``: nothing from the table, a file or the network is ever unpickled.

    Returns:
        The snapshot, or None if pickle cannot take a value (the payload serves then).
    """
    try:
        return pickle.dumps(generations, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # the tier must never fail a lookup: the JSON payload still works
        return None


def thaw(snapshot: bytes) -> list[Generation]:
    """The generations of a ``freeze`` snapshot, as new objects."""
    generations: list[Generation] = pickle.loads(snapshot)  # made by freeze
    return generations
