"""A chat model from langchain_core's fakes that counts how often it is really called."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult


class CountingChatModel(FakeListChatModel):
    """Answers with tool calls and usage metadata, and counts the calls that reached it."""

    responses: list[str] = ["answer"]  # noqa: RUF012 (a pydantic field)
    temperature: float = 0.0
    calls: int = 0

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"responses": self.responses, "temperature": self.temperature}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls += 1
        message = AIMessage(
            content=f"{self.responses[0]} #{self.calls} to {messages[-1].content}",
            tool_calls=[{"name": "lookup", "args": {"q": str(messages[-1].content)}, "id": "c1"}],
            usage_metadata={"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
            response_metadata={"model_name": "counting"},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])
