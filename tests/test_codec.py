"""The payload codec: the fast decode path builds exactly what langchain_core's load builds."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.load import load
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, Generation

from langchain_sqlalchemy_cache._codec import (
    ALLOWED_CLASSES,
    decode_generations,
    encode_generations,
)

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
texts = st.text(max_size=50)  # includes NUL and lone surrogates


@st.composite
def generations(draw: st.DrawFn) -> list[Generation]:
    result: list[Generation] = []
    for _ in range(draw(st.integers(1, 3))):
        info = draw(st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=3))
        if draw(st.booleans()):
            result.append(Generation(text=draw(texts), generation_info=info))
        else:
            message = AIMessage(
                content=draw(texts),
                additional_kwargs=draw(
                    st.dictionaries(st.text(max_size=5), json_values, max_size=2)
                ),
                response_metadata=draw(
                    st.dictionaries(st.text(max_size=5), json_values, max_size=2)
                ),
                tool_calls=[
                    {"name": draw(texts), "args": {"q": draw(texts)}, "id": draw(texts)}
                    for _ in range(draw(st.integers(0, 2)))
                ],
            )
            result.append(ChatGeneration(message=message, generation_info=info))
    return result


def load_reference(payload: str) -> Any:
    return load(json.loads(payload), allowed_objects=ALLOWED_CLASSES, secrets_from_env=False)


@settings(max_examples=200, deadline=None)
@given(generations())
def test_fast_decode_equals_load_and_the_original(value: list[Generation]) -> None:
    payload = encode_generations(value)
    assert payload.isascii()  # storable in any TEXT column, NUL and surrogates escaped
    decoded = decode_generations(payload)
    assert decoded == value
    assert decoded == load_reference(payload)
    assert [type(g) for g in decoded] == [type(g) for g in value]


def test_user_data_shaped_like_a_serialized_object_is_not_built() -> None:
    # generation_info that mimics a serialized HumanMessage: dumpd escapes it, and it must
    # come back as the same plain dict, not as a message object.
    lookalike = {
        "lc": 1,
        "type": "constructor",
        "id": ["langchain", "schema", "messages", "HumanMessage"],
        "kwargs": {"content": "x"},
    }
    value = [Generation(text="t", generation_info={"data": lookalike})]
    payload = encode_generations(value)
    assert "__lc_escaped__" in payload
    decoded = decode_generations(payload)
    assert decoded == value
    assert decoded is not None
    assert decoded[0].generation_info == {"data": lookalike}
    assert not isinstance(decoded[0].generation_info["data"], HumanMessage)  # type: ignore[index]


def test_tool_messages_and_human_messages_are_allowed() -> None:
    value = [
        ChatGeneration(message=HumanMessage("h")),  # unusual but allowed message classes
        ChatGeneration(message=ToolMessage("t", tool_call_id="c1")),  # type: ignore[arg-type]
    ]
    assert decode_generations(encode_generations(value)) == value
