"""OpenAI request bodies as msgspec Structs; decoding maps every defect to a 400 ApiError."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, TypeVar

import msgspec
from pdpair.router.errors import ApiError

MaxTokens = Annotated[int, msgspec.Meta(ge=1)]
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
Seed = Annotated[int, msgspec.Meta(ge=0)]  # <= 2**64 - 1, checked after decoding (msgspec bounds are int64)
Penalty = Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)]
Bias = Annotated[float, msgspec.Meta(ge=-100.0, le=100.0)]
TokenId = Annotated[int, msgspec.Meta(ge=0, lt=2**32)]


class TextPart(msgspec.Struct):
    type: str
    text: str = ""


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text":
                raise ApiError(400, f"unsupported content part type {part.type!r}", param="messages")
        return "".join(part.text for part in self.content)


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _Common(msgspec.Struct, kw_only=True):
    """Fields shared by chat and text completions (plus the vLLM-style extensions top_k/min_p/ignore_eos)."""

    model: str
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None  # None: the OpenAI default, 1.0
    top_p: TopP | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = 0
    min_p: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] = []
    ignore_eos: bool = False
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, msgspec.Meta(gt=0.0)] | None = None  # vLLM extension; 1 = off
    logit_bias: dict[str, Bias] | None = None  # token id (as a string) -> bias added to its logit
    # declared so that they are refused (400 naming the field) instead of silently ignored
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if any(not s for s in stops):
            raise ApiError(400, "stop strings must be non-empty", param="stop")
        if len(stops) > 16:
            raise ApiError(400, f"at most 16 stop strings, got {len(stops)}", param="stop")
        return stops

    def include_usage(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Common, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: MaxTokens | None = None

    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Common, kw_only=True):
    prompt: str | list[str | TokenId]
    echo: bool = False

    def token_budget(self) -> int | None:
        return self.max_tokens


def _check_prompt(prompt: str | list) -> None:
    if not prompt:
        raise ApiError(400, "prompt must not be empty", param="prompt")
    if isinstance(prompt, str):
        return
    strings = sum(isinstance(p, str) for p in prompt)
    if strings and (strings != 1 or len(prompt) != 1):
        raise ApiError(400, "prompt must be a string or a list of token ids (batched prompts are not supported)",
                       param="prompt")


def _refuse_unsupported(req: ChatCompletionRequest | CompletionRequest) -> None:
    if req.n != 1:
        raise ApiError(400, f"only n=1 is supported, got n={req.n}", param="n")
    for name in ("logprobs", "top_logprobs", "tools", "tool_choice", "functions", "function_call"):
        if getattr(req, name) not in (None, False, 0, [], {}, "none"):
            raise ApiError(400, f"{name} is not supported", param=name, code="unsupported_parameter")
    if req.response_format is not None and req.response_format != {"type": "text"}:
        raise ApiError(400, 'response_format is not supported (only {"type": "text"})', param="response_format",
                       code="unsupported_parameter")
    if req.seed is not None and req.seed > 2**64 - 1:
        raise ApiError(400, f"seed must be in [0, 2**64 - 1], got {req.seed}", param="seed")
    if req.repetition_penalty is not None and not math.isfinite(req.repetition_penalty):
        raise ApiError(400, "repetition_penalty must be finite", param="repetition_penalty")
    for key in req.logit_bias or {}:
        if not key.isdigit() or int(key) >= 2**32:
            raise ApiError(400, f"logit_bias keys must be token ids, got {key!r}", param="logit_bias")


Req = TypeVar("Req", ChatCompletionRequest, CompletionRequest)

_PATH = re.compile(r"at `\$\.?([^`]*)`")


def decode_request(body: bytes, kind: type[Req]) -> Req:
    """Decode and validate a request body; raise ApiError(400) naming the offending field."""
    try:
        req = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        match = _PATH.search(str(exc))
        param = match.group(1).replace("[...]", "") if match else None  # a dict value: name the dict
        raise ApiError(400, f"invalid request: {exc}", param=param or None, code="invalid_value") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"invalid JSON body: {exc}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "invalid JSON body: nested too deeply", code="invalid_json") from None
    _refuse_unsupported(req)
    if isinstance(req, ChatCompletionRequest):
        if not req.messages:
            raise ApiError(400, "messages must not be empty", param="messages")
    else:
        _check_prompt(req.prompt)
    req.stop_list()
    return req
