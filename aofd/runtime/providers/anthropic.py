"""The Anthropic Messages API provider: the ONLY module that imports `anthropic`.

It owns translating `base.ModelRequest` into a `messages.create` call (system prompt,
tool definitions, tool_use / tool_result turns, max_tokens, temperature) and the SDK's
response and errors back into `base.ModelResponse` / `base.ModelError`. The SDK's own
retries are off (`max_retries=0`): `base.complete_with_retry` retries within the run's
deadline. It must not read keys from resources or the environment itself: the key and
base URL are given by `registry.Providers`, which reads the daemon config.
"""

from __future__ import annotations

from typing import Any

import anthropic

from aofd.runtime.providers import base

_MAX_ERROR_TEXT = 300
UPSTREAM_DEFAULT_TEMPERATURE = 0.7


class AnthropicProvider:
    """`base.ModelProvider` over `anthropic.AsyncAnthropic`."""

    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        timeout: float,
        http_client: Any = None,
    ) -> None:
        kwargs: dict[str, Any] = {"api_key": api_key, "max_retries": 0, "timeout": timeout}
        if base_url:
            kwargs["base_url"] = base_url
        if http_client is not None:
            kwargs["http_client"] = http_client
        self._client = anthropic.AsyncAnthropic(**kwargs)

    async def complete(self, request: base.ModelRequest) -> base.ModelResponse:
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [_message(m) for m in request.messages],
        }
        if request.system:
            params["system"] = request.system
        if request.tools:
            params["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": dict(t.input_schema)}
                for t in request.tools
            ]
        if request.temperature is not None and request.temperature != UPSTREAM_DEFAULT_TEMPERATURE:
            # This SDK has no typed `temperature` parameter any more; send it only when an agent
            # sets one explicitly (upstream's 0.7 default is left to the API's own default).
            params["extra_body"] = {"temperature": request.temperature}
        if request.timeout is not None:
            params["timeout"] = request.timeout
        try:
            response = await self._client.messages.create(**params)
        except anthropic.APIStatusError as exc:
            raise _status_error(exc) from exc
        except anthropic.APITimeoutError as exc:
            raise base.ModelError(
                "the Anthropic API did not answer in time", provider=self.name, retryable=True
            ) from exc
        except anthropic.APIConnectionError as exc:
            raise base.ModelError(
                f"cannot reach the Anthropic API: {exc}", provider=self.name, retryable=True
            ) from exc
        except anthropic.AnthropicError as exc:
            raise base.ModelError(
                f"Anthropic client error: {exc}", provider=self.name, retryable=False
            ) from exc
        texts: list[str] = []
        calls: list[base.ToolCall] = []
        for block in response.content:
            kind = getattr(block, "type", "")
            if kind == "text":
                texts.append(str(block.text))
            elif kind == "tool_use":
                arguments = block.input if isinstance(block.input, dict) else {}
                calls.append(base.ToolCall(id=str(block.id), name=str(block.name), arguments=arguments))
        usage = response.usage
        return base.ModelResponse(
            text="".join(texts),
            tool_calls=tuple(calls),
            usage=base.Usage(int(usage.input_tokens or 0), int(usage.output_tokens or 0)),
            stop_reason=str(response.stop_reason or ""),
        )

    async def aclose(self) -> None:
        await self._client.close()


def _message(message: base.Message) -> dict[str, Any]:
    if message.tool_results:
        return {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": r.call_id,
                    "content": r.content,
                    **({"is_error": True} if r.is_error else {}),
                }
                for r in message.tool_results
            ],
        }
    if message.role == "assistant" and message.tool_calls:
        content: list[dict[str, Any]] = []
        if message.text:
            content.append({"type": "text", "text": message.text})
        content.extend(
            {"type": "tool_use", "id": c.id, "name": c.name, "input": dict(c.arguments)}
            for c in message.tool_calls
        )
        return {"role": "assistant", "content": content}
    return {"role": message.role, "content": message.text or "(empty)"}


def _status_error(exc: anthropic.APIStatusError) -> base.ModelError:
    status = int(exc.status_code)
    kind, detail = _error_body(exc.body)
    what = {429: "rate limited", 529: "overloaded"}.get(status, kind or "error")
    text = f"the Anthropic API answered HTTP {status} ({what})"
    if detail:
        text += f": {detail[:_MAX_ERROR_TEXT]}"
    retry_after = base.parse_retry_after(exc.response.headers.get("retry-after"))
    return base.ModelError(
        text,
        provider="anthropic",
        retryable=base.is_retryable_status(status),
        status=status,
        retry_after=retry_after,
    )


def _error_body(body: object) -> tuple[str, str]:
    """Anthropic's error shape: `{"type": "error", "error": {"type": ..., "message": ...}}`."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("type", "")), str(inner.get("message", ""))
    return "", ""
