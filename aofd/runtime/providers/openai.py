"""The OpenAI Chat Completions provider: the ONLY module that imports `openai`.

It serves `openai:` models and any OpenAI-compatible endpoint (Ollama, vLLM, LiteLLM,
Groq) reached through `models.openai_base_url`. It owns translating `base.ModelRequest`
into `chat.completions.create` (system message, `tools` as functions, assistant
`tool_calls`, `tool` role results) and the SDK's response and errors back. SDK retries
are off; `base.complete_with_retry` retries. Keys come from `registry.Providers`.
"""

from __future__ import annotations

import json
from typing import Any

import openai

from aofd.runtime.providers import base


class OpenAIProvider:
    """`base.ModelProvider` over `openai.AsyncOpenAI` (also for OpenAI-compatible servers)."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        timeout: float,
        name: str = "openai",
        http_client: Any = None,
    ) -> None:
        self.name = name
        kwargs: dict[str, Any] = {"api_key": api_key, "max_retries": 0, "timeout": timeout}
        if base_url:
            kwargs["base_url"] = base_url
        if http_client is not None:
            kwargs["http_client"] = http_client
        self._client = openai.AsyncOpenAI(**kwargs)

    async def complete(self, request: base.ModelRequest) -> base.ModelResponse:
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        for m in request.messages:
            messages.extend(_messages(m))
        params: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
        }
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": dict(t.input_schema),
                    },
                }
                for t in request.tools
            ]
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.timeout is not None:
            params["timeout"] = request.timeout
        try:
            response = await self._client.chat.completions.create(**params)
        except openai.APIStatusError as exc:
            status = int(exc.status_code)
            raise base.ModelError(
                f"the {self.name} API answered HTTP {status}: {str(exc.message)[:300]}",
                provider=self.name,
                retryable=base.is_retryable_status(status),
                status=status,
                retry_after=base.parse_retry_after(exc.response.headers.get("retry-after")),
            ) from exc
        except openai.APITimeoutError as exc:
            raise base.ModelError(
                f"the {self.name} API did not answer in time", provider=self.name, retryable=True
            ) from exc
        except openai.APIConnectionError as exc:
            raise base.ModelError(
                f"cannot reach the {self.name} API: {exc}", provider=self.name, retryable=True
            ) from exc
        except openai.OpenAIError as exc:
            raise base.ModelError(
                f"{self.name} client error: {exc}", provider=self.name, retryable=False
            ) from exc
        if not response.choices:
            raise base.ModelError(
                f"the {self.name} API returned no choices", provider=self.name, retryable=True
            )
        choice = response.choices[0]
        calls: list[base.ToolCall] = []
        for call in choice.message.tool_calls or ():
            function = getattr(call, "function", None)
            if function is None:
                continue
            try:
                arguments = json.loads(function.arguments or "{}")
            except json.JSONDecodeError:
                arguments = {"command": function.arguments}
            if not isinstance(arguments, dict):
                arguments = {}
            calls.append(base.ToolCall(id=call.id, name=function.name, arguments=arguments))
        usage = response.usage
        return base.ModelResponse(
            text=choice.message.content or "",
            tool_calls=tuple(calls),
            usage=base.Usage(
                int(usage.prompt_tokens) if usage else 0, int(usage.completion_tokens) if usage else 0
            ),
            stop_reason=str(choice.finish_reason or ""),
        )

    async def aclose(self) -> None:
        await self._client.close()


def _messages(message: base.Message) -> list[dict[str, Any]]:
    if message.tool_results:
        return [
            {"role": "tool", "tool_call_id": r.call_id, "content": r.content} for r in message.tool_results
        ]
    if message.role == "assistant" and message.tool_calls:
        return [
            {
                "role": "assistant",
                "content": message.text or None,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(dict(c.arguments))},
                    }
                    for c in message.tool_calls
                ],
            }
        ]
    return [{"role": message.role, "content": message.text}]
