"""The Google Gemini provider (`google:gemini-2.5-flash`): the ONLY module that imports `google.genai`.

`google-genai` is an optional extra (`pip install 'aofd[google]'`), so the import happens
when a provider is constructed, not when this module is imported: a daemon without the
package still starts, and `registry.provider_problem` marks bindings that need it Stalled.
It owns translating `base.ModelRequest` into `client.aio.models.generate_content`
(system instruction, function declarations, function calls and responses) and back.
"""

from __future__ import annotations

import itertools
from typing import Any

from aofd.runtime.providers import base

EXTRA_HINT = "provider google needs the google-genai package: pip install 'aofd[google]'"


def load_sdk() -> Any:
    """Import `google.genai` (and its `types`), or raise `base.ModelError` naming the extra to install."""
    try:
        # Imported here, not at module level: the SDK is an optional extra.
        from google import genai
        from google.genai import types
    except ImportError as exc:
        raise base.ModelError(EXTRA_HINT, provider="google", retryable=False) from exc
    return genai, types


class GoogleProvider:
    """`base.ModelProvider` over `google.genai.Client(...).aio`."""

    name = "google"

    def __init__(self, *, api_key: str, timeout: float) -> None:
        genai, types = load_sdk()
        self._types = types
        self._timeout = timeout
        self._client = genai.Client(api_key=api_key)
        self._ids = itertools.count(1)

    async def complete(self, request: base.ModelRequest) -> base.ModelResponse:
        types = self._types
        contents: list[Any] = []
        for m in request.messages:
            if m.tool_results:
                parts = [
                    types.Part.from_function_response(
                        name=r.name, response={"error" if r.is_error else "output": r.content}
                    )
                    for r in m.tool_results
                ]
                contents.append(types.Content(role="user", parts=parts))
            elif m.role == "assistant":
                parts = [types.Part(text=m.text)] if m.text else []
                parts.extend(
                    types.Part(function_call=types.FunctionCall(name=c.name, args=dict(c.arguments)))
                    for c in m.tool_calls
                )
                contents.append(types.Content(role="model", parts=parts))
            else:
                contents.append(types.Content(role="user", parts=[types.Part(text=m.text)]))
        config: dict[str, Any] = {"max_output_tokens": request.max_tokens}
        if request.system:
            config["system_instruction"] = request.system
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.tools:
            config["tools"] = [
                types.Tool(
                    function_declarations=[
                        types.FunctionDeclaration(
                            name=t.name,
                            description=t.description,
                            parameters_json_schema=dict(t.input_schema),
                        )
                        for t in request.tools
                    ]
                )
            ]
            config["automatic_function_calling"] = types.AutomaticFunctionCallingConfig(disable=True)
        try:
            response = await self._client.aio.models.generate_content(
                model=request.model, contents=contents, config=types.GenerateContentConfig(**config)
            )
        except Exception as exc:  # the SDK's error classes vary across releases; classify by code
            status = getattr(exc, "code", None)
            status = status if isinstance(status, int) else None
            retryable = status is None or base.is_retryable_status(status)
            raise base.ModelError(
                f"the Google API failed: {str(exc)[:300]}",
                provider=self.name,
                retryable=retryable,
                status=status,
            ) from exc
        texts: list[str] = []
        calls: list[base.ToolCall] = []
        candidates = getattr(response, "candidates", None) or []
        parts = (getattr(getattr(candidates[0], "content", None), "parts", None) or []) if candidates else []
        for part in parts:
            call = getattr(part, "function_call", None)
            if call is not None:
                call_id = getattr(call, "id", None) or f"call-{next(self._ids)}"
                calls.append(
                    base.ToolCall(id=str(call_id), name=str(call.name), arguments=dict(call.args or {}))
                )
            elif getattr(part, "text", None):
                texts.append(str(part.text))
        meta = getattr(response, "usage_metadata", None)
        usage = base.Usage(
            int(getattr(meta, "prompt_token_count", 0) or 0),
            int(getattr(meta, "candidates_token_count", 0) or 0),
        )
        return base.ModelResponse(text="".join(texts), tool_calls=tuple(calls), usage=usage)

    async def aclose(self) -> None:
        aio = getattr(self._client, "aio", None)
        close = getattr(aio, "aclose", None)
        if close is not None:
            await close()
