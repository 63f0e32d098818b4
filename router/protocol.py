"""OpenAI request bodies as msgspec Structs; decoding maps every defect to a 400 ApiError."""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

import msgspec
from pdpair.router.errors import ApiError

MaxTokens = Annotated[int, msgspec.Meta(ge=1)]
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
Seed = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
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
    logprobs: bool | int | None = None  # not supported: refused when asked for

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


Req = TypeVar("Req", ChatCompletionRequest, CompletionRequest)

_PATH = re.compile(r"at `\$\.?([^`]*)`")


def decode_request(body: bytes, kind: type[Req]) -> Req:
    """Decode and validate a request body; raise ApiError(400) naming the offending field."""
    try:
        req = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        match = _PATH.search(str(exc))
        param = match.group(1) if match else None
        raise ApiError(400, f"invalid request: {exc}", param=param or None, code="invalid_value") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"invalid JSON body: {exc}", code="invalid_json") from None
    if req.n != 1:
        raise ApiError(400, f"only n=1 is supported, got n={req.n}", param="n")
    if req.logprobs not in (None, False, 0):
        raise ApiError(400, "logprobs are not supported", param="logprobs")
    if isinstance(req, ChatCompletionRequest):
        if not req.messages:
            raise ApiError(400, "messages must not be empty", param="messages")
    else:
        _check_prompt(req.prompt)
    req.stop_list()
    return req
