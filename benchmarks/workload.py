"""The data every subject is benchmarked on: realistic prompts, llm_string and generations.

Everything is deterministic (seeded), so two runs store and look up the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from langchain_core.load import dumps
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, Generation

_VOCABULARY = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when "
    "if so what out up into more about than them can only other time new some could these "
    "two may first then do any like my now over such our man me even most made after also "
    "did many off before must well back through years much where your way down should "
    "because long each just state people those too how little good world very year still "
    "database query index latency cache prompt model token request response customer order "
    "invoice shipment account balance refund policy contract schedule report summary"
)
_WORDS = tuple(_VOCABULARY.split())

# A chat-model llm_string as LangChain builds it: the serialized model, then its params.
_LLM_STRING = (
    '{"lc": 1, "type": "constructor", "id": ["langchain", "chat_models", "openai", '
    '"ChatOpenAI"], "kwargs": {"model_name": "gpt-4o-mini-2024-07-18", "temperature": 0.0, '
    '"openai_api_key": {"lc": 1, "type": "secret", "id": ["OPENAI_API_KEY"]}, '
    '"max_retries": 2, "n": 1}, "name": "ChatOpenAI"}---[(\'_type\', \'openai-chat\'), '
    "('model', 'gpt-4o-mini-2024-07-18'), ('stop', None), ('temperature', 0.0), "
    "('tool_choice', 'auto'), ('tools', ['lookup_order', 'issue_refund', 'send_email'])]"
)


def _text(rng: random.Random, n_chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < n_chars:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:n_chars].capitalize() + "."


def make_prompt(rng: random.Random, index: int) -> str:
    """A dumped chat message list of 2-5 KB, as LangChain uses for a chat model's prompt."""
    target = rng.randint(2_000, 5_000)
    messages = [
        SystemMessage(f"You are support agent #{index}. " + _text(rng, target // 3)),
        HumanMessage(_text(rng, target // 6)),
        AIMessage(
            "",
            tool_calls=[
                {"name": "lookup_order", "args": {"order_id": f"A-{index:06d}"}, "id": "call_1"}
            ],
        ),
        ToolMessage(_text(rng, target // 6), tool_call_id="call_1"),
        HumanMessage(_text(rng, max(50, target // 6))),
    ]
    return dumps(messages)


def make_generation(rng: random.Random, index: int) -> list[Generation]:
    """One ChatGeneration: ~1 KB of content, tool_calls, usage and response metadata."""
    message = AIMessage(
        content=_text(rng, 1_000),
        tool_calls=[
            {
                "name": "issue_refund",
                "args": {"order_id": f"A-{index:06d}", "amount": 12.5, "reason": "late"},
                "id": f"call_{index}_r",
            },
            {
                "name": "send_email",
                "args": {"to": f"customer{index}@example.com", "template": "refund"},
                "id": f"call_{index}_e",
            },
        ],
        usage_metadata={
            "input_tokens": 1_234,
            "output_tokens": 321,
            "total_tokens": 1_555,
            "input_token_details": {"cache_read": 1_024},
            "output_token_details": {"reasoning": 0},
        },
        response_metadata={
            "model_name": "gpt-4o-mini-2024-07-18",
            "finish_reason": "tool_calls",
            "system_fingerprint": "fp_0123456789",
            "token_usage": {"prompt_tokens": 1_234, "completion_tokens": 321},
        },
        id=f"run-{index:08d}-0000-4000-8000-000000000000",
    )
    return [ChatGeneration(message=message, generation_info={"finish_reason": "tool_calls"})]


@dataclass(frozen=True)
class Workload:
    """N stored entries (hits), N never-stored prompts (misses), one llm_string."""

    llm_string: str
    prompts: list[str]
    miss_prompts: list[str]
    values: list[list[Generation]]

    @property
    def size(self) -> int:
        """Number of distinct stored keys."""
        return len(self.prompts)

    def describe(self) -> dict[str, float | int]:
        """Sizes of what is stored, for the report."""
        lengths = sorted(len(p) for p in self.prompts)
        return {
            "keys": self.size,
            "prompt_bytes_min": lengths[0],
            "prompt_bytes_median": lengths[len(lengths) // 2],
            "prompt_bytes_max": lengths[-1],
            "llm_string_bytes": len(self.llm_string),
            "content_chars": len(str(self.values[0][0].message.content))  # type: ignore[attr-defined]
            if self.values
            else 0,
        }


def build_workload(keys: int, seed: int = 1234) -> Workload:
    """Build ``keys`` stored entries plus as many prompts that are never stored."""
    rng = random.Random(seed)
    prompts = [make_prompt(rng, i) for i in range(keys)]
    miss_prompts = [make_prompt(rng, keys + i) for i in range(keys)]
    values = [make_generation(rng, i) for i in range(keys)]
    return Workload(_LLM_STRING, prompts, miss_prompts, values)
