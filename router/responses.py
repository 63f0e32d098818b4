"""OpenAI response bodies (and the `pdpair` extension field) as msgspec Structs."""

from __future__ import annotations

import msgspec
from pdpair.proto import pdpair_pb2 as pb


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(prompt, completion, prompt + completion)


class TransferInfo(msgspec.Struct):
    items: int
    bytes: int
    batches: int
    entries: int
    seconds: float
    gbps: float  # GB/s (1e9 bytes per second) over the time spent inside the transfer engine


class PdpairInfo(msgspec.Struct):
    """Non-standard extension: where and how fast the request ran."""

    ttft_s: float
    prefilled_remotely: bool
    decode_node: str
    prefill_node: str | None
    transfer: TransferInfo | None


def pdpair_info(chunk: pb.TokenChunk, decode_node: str, prefill_node: str | None) -> PdpairInfo:
    """The extension from the first TokenChunk of a stream."""
    transfer = None
    if chunk.HasField("transfer"):
        t = chunk.transfer
        gbps = t.bytes / t.seconds / 1e9 if t.seconds > 0 else 0.0
        transfer = TransferInfo(t.items, t.bytes, t.batches, t.entries, t.seconds, gbps)
    return PdpairInfo(
        ttft_s=chunk.ttft_seconds,
        prefilled_remotely=chunk.prefilled_remotely,
        decode_node=decode_node,
        prefill_node=prefill_node if chunk.prefilled_remotely else None,
        transfer=transfer,
    )


# --- /v1/chat/completions ---


class ChatMessageOut(msgspec.Struct):
    role: str
    content: str


class ChatChoice(msgspec.Struct):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(msgspec.Struct, omit_defaults=True):
    id: str
    object: str  # "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    pdpair: PdpairInfo | None = None


class ChatDelta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(msgspec.Struct):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, omit_defaults=True):
    id: str
    object: str  # "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    pdpair: PdpairInfo | None = None


# --- /v1/completions ---


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class Completion(msgspec.Struct, omit_defaults=True):
    id: str
    object: str  # "text_completion" (also for stream chunks)
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    pdpair: PdpairInfo | None = None


# --- /v1/models ---


class ModelEntry(msgspec.Struct):
    id: str
    created: int
    owned_by: str = "pdpair"
    object: str = "model"
    max_model_len: int = 0


class ModelList(msgspec.Struct):
    data: list[ModelEntry]
    object: str = "list"
