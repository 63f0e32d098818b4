"""Server-sent events framing for OpenAI streams: `data: {json}\\n\\n` ... `data: [DONE]\\n\\n`."""

from __future__ import annotations

from typing import Any

import msgspec

DONE = b"data: [DONE]\n\n"
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

_encoder = msgspec.json.Encoder()


def encode(payload: Any) -> bytes:
    """Compact JSON bytes."""
    return _encoder.encode(payload)


def event(payload: Any) -> bytes:
    """One SSE event carrying `payload` (a msgspec Struct, dict or list) as compact JSON."""
    return b"data: " + _encoder.encode(payload) + b"\n\n"


def parse_events(raw: bytes) -> list[bytes]:
    """Split an SSE byte stream into the `data:` payloads, in order (used by clients and tests)."""
    out = []
    for block in raw.split(b"\n\n"):
        if not block.strip():
            continue
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                out.append(line[5:].strip())
    return out
