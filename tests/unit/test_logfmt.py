"""--log-format json and request ids: the formatter, the context variable across concurrent tasks, and the nodes'
gRPC edge (node/wire.py) binding each call's `rid` (a real grpc.aio server, handlers in both streaming styles).
"""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import pytest
from pdpair.node.wire import add_service
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc

from pdpair.logfmt import JsonFormatter, RequestIdFilter, bind_rid, setup_logging

log = logging.getLogger("pdpair.test.logfmt")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(RequestIdFilter())
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def capture():
    handler = Capture()
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler
    log.removeHandler(handler)


def test_json_lines_carry_the_rid_of_their_own_task(capture):
    async def request(rid: str) -> None:
        bind_rid(rid)
        for step in range(3):
            log.info("step %d of %s", step, rid)
            await asyncio.sleep(0)  # interleave with the other request

    async def body():
        await asyncio.gather(request("r-one"), request("r-two"))
        log.info("outside any request")
        log.warning("explicit", extra={"rid": "r-explicit"})

    asyncio.run(body())
    for line in capture.lines[:6]:
        assert line["msg"].endswith(line["rid"]) and line["level"] == "INFO" and line["logger"] == log.name
    assert sorted(line["rid"] for line in capture.lines[:6]) == ["r-one"] * 3 + ["r-two"] * 3
    assert "rid" not in capture.lines[6] and capture.lines[7]["rid"] == "r-explicit"
    assert capture.lines[0]["ts"].endswith("Z") and "T" in capture.lines[0]["ts"]


def test_exceptions_are_one_json_line_and_text_format_shows_the_rid(capsys):
    setup_logging("INFO", "json")
    try:
        raise ValueError("bad page")
    except ValueError:
        log.exception("transfer failed")
    setup_logging("INFO", "text")
    bind_rid("r-text")
    log.info("hello")
    bind_rid("")
    err = capsys.readouterr().err.splitlines()
    first = json.loads(err[0])
    assert first["msg"] == "transfer failed" and "ValueError: bad page" in first["exc"]
    assert err[-1].endswith("pdpair.test.logfmt [r-text]: hello")
    with pytest.raises(ValueError, match="log format"):
        setup_logging("INFO", "xml")
    logging.getLogger().handlers.clear()


class Servicer(pb_grpc.DecodeNodeServicer):
    async def Generate(self, request, context):  # the write() style, as the decode node's servicer
        log.info("generate start")
        await asyncio.sleep(0.01)
        await context.write(pb.TokenChunk(token_ids=[1]))
        log.info("generate end")

    async def Stats(self, request, context):
        log.info("stats")
        return pb.NodeStats(role="decode")


class GenServicer(Servicer):
    async def Generate(self, request, context):  # the async-generator style
        log.info("gen start")
        yield pb.TokenChunk(token_ids=[2])
        await asyncio.sleep(0.01)
        log.info("gen end")


@pytest.mark.parametrize("servicer", [Servicer, GenServicer])
def test_node_grpc_edge_binds_each_calls_rid(capture, servicer):
    async def body():
        server = grpc.aio.server()
        add_service(server, servicer(), "DecodeNode")
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.DecodeNodeStub(ch)

            async def gen(rid):
                return [c.token_ids[0] async for c in stub.Generate(pb.GenerateRequest(rid=rid))]

            chunks = await asyncio.gather(*(gen(f"rid-{i}") for i in range(4)))
            await stub.Stats(pb.StatsRequest())
        await server.stop(None)
        return chunks

    chunks = asyncio.run(body())
    assert all(len(c) == 1 for c in chunks)  # the wrapped handlers still answer
    gen_lines = [line for line in capture.lines if line["msg"].startswith("gen")]
    assert len(gen_lines) == 8
    for i in range(4):
        assert sum(line.get("rid") == f"rid-{i}" for line in gen_lines) == 2
    (stats,) = [line for line in capture.lines if line["msg"] == "stats"]
    assert "rid" not in stats  # a call without a rid logs without one
