"""The payload codec: what goes in comes out, of the same classes, and nothing else is built."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk
from pydantic import BaseModel

from langchain_sqlalchemy_cache._codec import (
    UncacheableError,
    _parse,
    decode_generations,
    encode_generations,
    freeze,
    thaw,
)

from .helpers import HOSTILE_PAYLOADS

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # past 64 bits as well: they must come back as the same integers
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
texts = st.text(max_size=50)  # includes NUL, lone surrogates and astral characters
metadata = st.dictionaries(st.text(max_size=8), json_values, max_size=3)


@st.composite
def ai_messages(draw: st.DrawFn, cls: type[AIMessage] = AIMessage) -> AIMessage:
    usage = draw(
        st.none()
        | st.builds(
            lambda i, o: {"input_tokens": i, "output_tokens": o, "total_tokens": i + o},
            st.integers(0, 10**6),
            st.integers(0, 10**6),
        )
    )
    drawn = draw(
        texts
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=2)
    )
    content: str | list[str | dict[Any, Any]] = drawn if isinstance(drawn, str) else [*drawn]
    return cls(
        content=content,
        id=draw(st.none() | texts),
        additional_kwargs=draw(metadata),
        response_metadata=draw(metadata),
        tool_calls=[
            {"name": draw(texts), "args": draw(metadata), "id": draw(st.none() | texts)}
            for _ in range(draw(st.integers(0, 2)))
        ],
        usage_metadata=usage,
    )


@st.composite
def generations(draw: st.DrawFn) -> list[Generation]:
    result: list[Generation] = []
    for _ in range(draw(st.integers(0, 3))):
        info = draw(st.none() | metadata)
        kind = draw(st.sampled_from(["plain", "chunk", "chat", "chat chunk", "human"]))
        if kind == "plain":
            result.append(Generation(text=draw(texts), generation_info=info))
        elif kind == "chunk":
            result.append(GenerationChunk(text=draw(texts), generation_info=info))
        elif kind == "chat":
            result.append(ChatGeneration(message=draw(ai_messages()), generation_info=info))
        elif kind == "chat chunk":
            message = draw(ai_messages(AIMessageChunk))
            assert isinstance(message, AIMessageChunk)
            result.append(ChatGenerationChunk(message=message, generation_info=info))
        else:
            result.append(
                ChatGeneration(message=HumanMessage(draw(texts), id=draw(st.none() | texts)))
            )
    return result


@settings(max_examples=300, deadline=None)
@given(generations())
def test_decode_returns_equal_objects_of_the_same_classes(value: list[Generation]) -> None:
    payload = encode_generations(value)
    assert b"\x00" not in payload  # NUL is escaped by JSON
    decoded = decode_generations(payload)
    assert decoded == value
    assert decoded is not None
    assert [type(g) for g in decoded] == [type(g) for g in value]
    for original, copy in zip(value, decoded, strict=True):
        if isinstance(original, ChatGeneration):
            assert type(copy.message) is type(original.message)  # type: ignore[attr-defined]


def anatomy(value: Any, mutable: list[object]) -> Any:
    """Everything that makes up ``value``: classes, fields, fields set, extras, recursively.

    Its mutable parts (models, lists, dicts) are appended to ``mutable``.
    """
    if isinstance(value, BaseModel):
        mutable.append(value)
        return (
            type(value),
            anatomy(value.__dict__, mutable),
            sorted(value.model_fields_set),
            anatomy(value.__pydantic_extra__, mutable),
            anatomy(value.__pydantic_private__, mutable),
        )
    if isinstance(value, dict):
        mutable.append(value)
        return (dict, [(anatomy(k, mutable), anatomy(v, mutable)) for k, v in value.items()])
    if isinstance(value, list):
        mutable.append(value)
        return (list, [anatomy(item, mutable) for item in value])
    return (type(value), repr(value))


@settings(max_examples=300, deadline=None)
@given(generations())
def test_a_tier_snapshot_reads_back_as_the_decoded_objects(value: list[Generation]) -> None:
    decoded = decode_generations(encode_generations(value))
    assert decoded is not None
    snapshot = freeze(decoded)
    assert snapshot is not None
    parts: list[list[object]] = [[], [], []]
    first, second = thaw(snapshot), thaw(snapshot)
    assert anatomy(first, parts[0]) == anatomy(decoded, parts[1]) == anatomy(second, parts[2])
    # No list, dict or model is shared: a caller's change reaches no other caller.
    first_ids, decoded_ids, second_ids = ({id(part) for part in group} for group in parts)
    assert first_ids.isdisjoint(decoded_ids)
    assert first_ids.isdisjoint(second_ids)
    assert second_ids.isdisjoint(decoded_ids)


def test_user_data_shaped_like_a_serialized_object_stays_data() -> None:
    lookalike = {
        "lc": 1,
        "type": "constructor",
        "id": ["langchain", "schema", "messages", "HumanMessage"],
        "kwargs": {"content": "x"},
    }
    value = [
        ChatGeneration(
            message=AIMessage("", tool_calls=[{"name": "t", "args": {"a": lookalike}, "id": "1"}]),
            generation_info={"data": lookalike},
        )
    ]
    decoded = decode_generations(encode_generations(value))
    assert decoded == value
    assert decoded is not None
    assert decoded[0].generation_info == {"data": lookalike}
    assert decoded[0].message.tool_calls[0]["args"] == {"a": lookalike}  # type: ignore[attr-defined]


def test_tool_messages_round_trip() -> None:
    value = [ChatGeneration(message=ToolMessage("t", tool_call_id="c1", artifact={"k": [1]}))]
    assert decode_generations(encode_generations(value)) == value


def test_values_json_cannot_hold_are_refused_not_degraded() -> None:
    with pytest.raises(UncacheableError, match="JSON"):
        encode_generations([Generation(text="t", generation_info={"at": datetime.datetime.now()})])
    with pytest.raises(UncacheableError, match="JSON"):
        encode_generations([Generation(text="t", generation_info={"x": float("nan")})])


def test_classes_outside_the_allowlist_are_refused() -> None:
    class MyGeneration(Generation):
        pass

    with pytest.raises(UncacheableError, match="not one of the cacheable classes"):
        encode_generations([MyGeneration(text="t")])


@pytest.mark.parametrize("name", list(HOSTILE_PAYLOADS))
def test_hostile_payloads_are_misses_with_a_warning(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="langchain_sqlalchemy_cache"):
        assert decode_generations(HOSTILE_PAYLOADS[name]) is None
    assert "treating it as a miss" in caplog.text


def test_adjacent_lone_surrogates_stay_two_code_points() -> None:
    # Found by Hypothesis: JSON escapes would have joined them into one astral character.
    value = [Generation(text="\ud800\udfff"), Generation(text="\U000103ff")]
    decoded = decode_generations(encode_generations(value))
    assert decoded == value
    assert decoded is not None
    assert len(decoded[0].text) == 2


def test_integers_past_64_bits_come_back_whole() -> None:
    info = {"u64": 2**64 - 1, "past": 2**64, "low": -(2**63) - 1, "huge": 10**30, "run": "9" * 25}
    decoded = decode_generations(encode_generations([Generation(text="t", generation_info=info)]))
    assert decoded is not None
    back = decoded[0].generation_info
    assert back == info
    assert back is not None
    assert {k: type(v) for k, v in back.items()} == {k: type(v) for k, v in info.items()}


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_payloads_parse_to_what_the_json_module_reads(value: Any) -> None:
    # The fast parser is taken only where it agrees; repr tells 1 from 1.0 and -0.0 from 0.
    payload = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    expected = repr(json.loads(payload.decode("utf-8", "surrogatepass")))
    assert repr(_parse(payload)) == expected
    assert repr(_parse(memoryview(payload))) == expected  # as some drivers hand it over


@pytest.mark.parametrize(
    "text",
    ["[NaN, Infinity, -Infinity]", "[1e400, -1e999]", '["\\ud800", "\\udfff x"]', "[-0, -0.0]"],
)
def test_json_only_values_in_rows_read_as_the_json_module_reads_them(text: str) -> None:
    assert repr(_parse(text.encode())) == repr(json.loads(text))
