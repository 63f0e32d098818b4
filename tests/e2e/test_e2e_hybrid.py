"""A hybrid mamba2 model (tiny Granite 4.0-H dense, `--model DIR`) through the real daemons: disaggregated ==
colocated == transformers; the first TokenChunk reports the prompt's `kv` pages and exactly one `mamba` item;
16 concurrent mixed requests with cancellations mid-prefill and mid-transfer leave the survivors equal to their
solo runs and every page and state slot free; the handshake refuses another state shape or dtype."""

from __future__ import annotations

import random
import threading
import time

import grpc
import pytest
from pdpair.proto import pdpair_pb2 as pb

from tests.e2e._client import (
    disagg_equals_colocated_and_hf,
    generate,
    new_rid,
    pool_transfer,
    sampling,
    wait_all_free,
)
from tests.e2e._nodes import start_cluster
from tests.hybrid_models import VOCAB, save_hybrid

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")

PAGE, CHUNK = 4, 5
ARGS = ("--page-size", str(PAGE), "--chunk-size", str(CHUNK), "--max-pages", "256", "--attention-backend", "torch")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    path = tmp_path_factory.mktemp("hybrid-granite")
    hf = save_hybrid("granite", path)
    model = ("--model", str(path))
    c = start_cluster(prefill_args=ARGS + model, decode_args=ARGS + model)
    c.model_dir = str(path)
    yield c, hf
    codes = c.stop()
    assert codes == {"prefill": 0, "decode": 0}, codes


def _ids(n: int, salt: int = 0) -> list[int]:
    return [(37 * i + n + 11 * salt) % (VOCAB - 3) + 3 for i in range(n)]


@pytest.mark.parametrize("n", [2, 4 * PAGE, 3 * CHUNK + 2])
def test_disaggregated_equals_colocated_and_transformers(cluster, n):
    c, hf = cluster
    t = disagg_equals_colocated_and_hf(c, hf, _ids(n), 10)
    kv, mamba = pool_transfer(t, "kv"), pool_transfer(t, "mamba")
    assert (kv.items, mamba.items, mamba.entries) == (-(-n // PAGE), 1, 1), t
    assert kv.items + mamba.items == t.items and kv.bytes + mamba.bytes == t.bytes
    for node in c.nodes:
        st = wait_all_free(node)
        assert st.integrity_ok and {p.kind for p in st.pools} == {"kv", "mamba"}


def test_concurrent_requests_with_cancellations(cluster):
    """16 mixed requests (remote and local prefill, short and long prompts); 6 are cancelled at staggered times
    while prefilling or transferring. Survivors equal their solo runs (a slot reused too early would show)."""
    c, _ = cluster
    rng = random.Random(7)
    cancel_after = {i: 0.01 + 0.04 * k for k, i in enumerate((1, 2, 4, 6, 7, 15))}  # 6 is prefilled locally
    jobs = [(_ids(260 if i in cancel_after else rng.choice([3, 9, 40, 120, 260]), salt=i), i % 3 != 0)
            for i in range(16)]
    sp = sampling(max_new_tokens=6)
    solo = [generate(c.decode.stub, ids, sp, prefill_addr=c.prefill.addr if remote else "").tokens
            for ids, remote in jobs]
    results: dict[int, object] = {}

    def run(i: int, call) -> None:
        toks = []
        try:
            for chunk in call:
                toks.extend(chunk.token_ids)
            results[i] = toks
        except grpc.RpcError as exc:
            results[i] = exc.code()

    aborted_before = c.prefill.stats().requests_aborted
    calls, threads = [], []
    for i, (ids, remote) in enumerate(jobs):
        req = pb.GenerateRequest(rid=new_rid(f"mix{i}"), token_ids=ids, sampling=sp,
                                 prefill_addr=c.prefill.addr if remote else "")
        call = c.decode.stub.Generate(req, timeout=300)
        calls.append(call)
        threads.append(threading.Thread(target=run, args=(i, call)))
        threads[-1].start()
    start = time.monotonic()
    for i, delay in sorted(cancel_after.items(), key=lambda kv: kv[1]):
        time.sleep(max(0.0, start + delay - time.monotonic()))
        calls[i].cancel()
    for t in threads:
        t.join(timeout=300)
    cancelled = [i for i in cancel_after if results[i] == grpc.StatusCode.CANCELLED]
    assert len(cancelled) >= 4, f"only {cancelled} of {sorted(cancel_after)} were cancelled before finishing"
    for i, got in results.items():
        if got != grpc.StatusCode.CANCELLED:
            assert got == solo[i], f"request {i} ({len(jobs[i][0])} tokens, remote={jobs[i][1]})"
    for node in c.nodes:
        st = wait_all_free(node)
        assert st.integrity_ok and pool_transfer(st, "mamba").total > 0
    assert c.prefill.stats().requests_aborted > aborted_before  # cancels reached the prefill node mid-flight


@pytest.mark.parametrize("field, change", [
    ("dtype", lambda r: {"dtype": r.dtype.replace("conv:float32", "conv:bfloat16")}),
    ("item_bytes", lambda r: {"item_bytes": r.item_bytes + 64}),
])
def test_handshake_refuses_another_state_shape_or_dtype(cluster, field, change):
    import msgspec
    from pdpair.engine import Engine
    from pdpair.node.layout import engine_layout, layout_to_proto
    from pdpair.proto import pdpair_pb2_grpc as pb_grpc

    c, _ = cluster
    eng = Engine.from_model(c.model_dir, device="cpu", dtype="float32", page_size=PAGE, max_pages=8,
                            max_running_requests=2)
    ours = engine_layout(eng, f"probe-{field}", "127.0.0.1:1", "tcp")
    mamba = ours.region("mamba")
    assert mamba.dtype.startswith("conv:float32[3,") and ";ssm:float32[3,8,16,16]" in mamba.dtype
    regions = tuple(msgspec.structs.replace(r, **change(r)) if r.kind == "mamba" else r for r in ours.regions)
    stub = pb_grpc.PrefillNodeStub(grpc.insecure_channel(c.prefill.addr))
    stub.Handshake(pb.HandshakeRequest(decode_layout=layout_to_proto(ours)), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        stub.Handshake(pb.HandshakeRequest(decode_layout=layout_to_proto(msgspec.structs.replace(
            ours, node_id=f"probe2-{field}", regions=regions))), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"regions[mamba].{field}" in err.value.details()
