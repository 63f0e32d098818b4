"""SSE framing of OpenAI streams."""

from __future__ import annotations

import json

from pdpair.router import sse
from pdpair.router.responses import ChatChunkChoice, ChatCompletionChunk, ChatDelta


def test_event_framing():
    chunk = ChatCompletionChunk("chatcmpl-1", "chat.completion.chunk", 1, "m",
                                [ChatChunkChoice(0, ChatDelta(content="hé\n\n"))])
    raw = sse.event(chunk)
    assert raw.startswith(b"data: {") and raw.endswith(b"}\n\n") and raw.count(b"\n") == 2
    body = json.loads(raw[len(b"data: "):])
    assert body["choices"][0] == {"index": 0, "delta": {"content": "hé\n\n"}, "finish_reason": None, "logprobs": None}
    assert "usage" not in body and "pdpair" not in body
    assert sse.DONE == b"data: [DONE]\n\n"


def test_parse_events_round_trip():
    payloads = [{"a": 1}, {"text": "line\nbreak"}, {"b": [1, 2]}]
    raw = b"".join(sse.event(p) for p in payloads) + sse.DONE
    events = sse.parse_events(raw)
    assert [json.loads(e) for e in events[:-1]] == payloads and events[-1] == b"[DONE]"
