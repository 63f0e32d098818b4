"""gRPC client helpers for the node tests: Generate, Prefill with hand-made registrations, page accounting."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import grpc
from pdpair.proto import pdpair_pb2 as pb

_rids = iter(range(1 << 30))


def new_rid(prefix: str = "t") -> str:
    return f"{prefix}-{next(_rids)}-{uuid.uuid4().hex[:6]}"


def sampling(max_new_tokens: int = 16, temperature: float = 0.0, seed: int | None = None, **kw) -> pb.SamplingParams:
    msg = pb.SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, **kw)
    if seed is not None:
        msg.seed = seed
    return msg


@dataclass(eq=False)
class Generation:
    tokens: list[int] = field(default_factory=list)
    chunks: list[pb.TokenChunk] = field(default_factory=list)

    @property
    def first(self) -> pb.TokenChunk:
        return self.chunks[0]

    @property
    def finish_reason(self) -> str:
        return self.chunks[-1].finish_reason


def generate(stub, token_ids: list[int], sp: pb.SamplingParams, prefill_addr: str = "",
             rid: str | None = None, timeout: float = 300.0) -> Generation:
    req = pb.GenerateRequest(rid=rid or new_rid(), token_ids=token_ids, sampling=sp, prefill_addr=prefill_addr)
    out = Generation()
    for chunk in stub.Generate(req, timeout=timeout):
        out.chunks.append(chunk)
        out.tokens.extend(chunk.token_ids)
    return out


def prompt(n: int, salt: int = 0) -> list[int]:
    """A deterministic prompt of n ordinary token ids (no special tokens)."""
    return [1000 + (7 * i + 13 * salt) % 20000 for i in range(n)]


def pool_transfer(msg: pb.TransferStats, kind: str) -> pb.PoolTransfer:
    return next(p for p in msg.pools if p.kind == kind)


def disagg_equals_colocated_and_hf(cluster, hf, ids: list[int], max_new_tokens: int) -> pb.TransferStats:
    """Greedy through the decode node alone, through the pair, and through transformers' `hf`: all three
    equal (asserted); returns the disaggregated request's transfer figures."""
    from tests._oracle import hf_greedy

    sp = sampling(max_new_tokens=max_new_tokens)
    colocated = generate(cluster.decode.stub, ids, sp)
    disagg = generate(cluster.decode.stub, ids, sp, prefill_addr=cluster.prefill.addr)
    ref = hf_greedy(hf, ids, max_new_tokens)
    assert disagg.tokens == colocated.tokens == ref
    assert disagg.first.prefilled_remotely and not colocated.first.prefilled_remotely
    return disagg.first.transfer


def wait_for(cond, what: str, timeout: float = 120.0) -> None:
    """Poll cond() every 10 ms until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def wait_all_free(node, timeout: float = 30.0, reserved: int = 0) -> pb.NodeStats:
    """Poll Stats until every pool item is free or in the prefix cache (none quarantined, none held by a
    request) but `reserved` per pool (a node with ranks keeps item 0 for padding rows) and integrity holds;
    returns the Stats."""
    deadline = time.monotonic() + timeout
    while True:
        st = node.stats()
        if all(p.free + p.cached + reserved == p.total and p.quarantined == 0 for p in st.pools) and st.integrity_ok:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.role} node still holds pages after {timeout:.0f}s: {st}")
        time.sleep(0.2)


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError | None:
    """Call a unary stub method, or drain a streaming one; return the RpcError it raised, or None."""
    try:
        result = fn(*args, **kwargs)
        if not hasattr(result, "ByteSize"):  # a response stream
            list(result)
    except grpc.RpcError as err:
        return err
    return None
