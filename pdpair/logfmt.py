"""Log setup shared by the three daemons: text or JSON lines, each carrying the request id it belongs to.

The request id lives in a context variable: code on a request's path calls `bind_rid(rid)` once (a gRPC
interceptor on the nodes, the router's node client) and every later log line of that asyncio task carries it.
A line may also name its request explicitly with `extra={"rid": ...}`. Torch-free: the router imports it.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import logging
import time

FORMATS = ("text", "json")
_RID: contextvars.ContextVar[str] = contextvars.ContextVar("pdpair_rid", default="")
_TEXT = "%(asctime)s %(levelname)s %(name)s%(rid_text)s: %(message)s"


def bind_rid(rid: str) -> None:
    """Mark the current task (and what it awaits) as working on request `rid`."""
    _RID.set(rid)


def current_rid() -> str:
    return _RID.get()


class RequestIdFilter(logging.Filter):
    """Sets `record.rid` (explicit `extra` first, else the context's) and `record.rid_text` for text lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = getattr(record, "rid", "") or _RID.get()
        record.rid = rid
        record.rid_text = f" [{rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO 8601), level, logger, msg, rid when known, exc when raised."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out = {"ts": ts, "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        rid = getattr(record, "rid", "")
        if rid:
            out["rid"] = rid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def add_log_format_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", default="text", choices=FORMATS,
                        help="text: human-readable lines; json: one JSON object per line (ts, level, logger, msg, "
                        "rid = the request id on every line of a request's path) for log collectors "
                        "(default: %(default)s)")


def setup_logging(level: str, fmt: str = "text") -> None:
    """Root handler on stderr in `fmt`; DEBUG applies to pdpair's loggers only (grpc's are chatty)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    numeric = logging.getLevelName(level)
    logging.basicConfig(level=max(numeric, logging.INFO), handlers=[handler], force=True)
    logging.getLogger("pdpair").setLevel(numeric)
