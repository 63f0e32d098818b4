"""A sliding-window model (tiny Gemma 3 text, `--model DIR`) through the real daemons: disaggregated ==
colocated == transformers; the first TokenChunk reports the `kv` pages of the prompt and the `swa` window
tail per pool; a long decode keeps the decode node's `swa` usage bounded; every page of both kinds is free
afterwards with integrity holding."""

from __future__ import annotations

import threading
import time

import pytest
from pdpair.proto import pdpair_pb2 as pb

from tests.e2e._client import disagg_equals_colocated_and_hf, generate, pool_transfer, sampling, wait_all_free
from tests.e2e._nodes import start_cluster
from tests.swa_models import VOCAB, save_tiny_swa

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")

PAGE, CHUNK, WINDOW = 4, 8, 7
ARGS = ("--page-size", str(PAGE), "--chunk-size", str(CHUNK), "--max-pages", "128")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    path = tmp_path_factory.mktemp("swa-gemma3")
    hf = save_tiny_swa("gemma3", WINDOW, path)
    model = ("--model", str(path))
    c = start_cluster(prefill_args=ARGS + model, decode_args=ARGS + model)
    c.model_dir = str(path)
    yield c, hf
    codes = c.stop()
    assert codes == {"prefill": 0, "decode": 0}, codes


def _ids(n: int) -> list[int]:
    return [(37 * i + n) % (VOCAB - 3) + 3 for i in range(n)]


def _tail_pages(n: int) -> int:
    first = max(0, n - (WINDOW - 1)) // PAGE
    return -(-n // PAGE) - first


@pytest.mark.parametrize("n", [WINDOW + 1, 4 * PAGE, 3 * CHUNK + 5])
def test_disaggregated_equals_colocated_and_transformers(cluster, n):
    c, hf = cluster
    t = disagg_equals_colocated_and_hf(c, hf, _ids(n), 12)
    kv, swa = pool_transfer(t, "kv"), pool_transfer(t, "swa")
    assert (kv.items, swa.items) == (-(-n // PAGE), _tail_pages(n)), t
    assert kv.items + swa.items == t.items and kv.bytes + swa.bytes == t.bytes
    assert swa.entries >= 1 and kv.entries >= 1


def test_seeded_sampling_matches(cluster):
    c, _ = cluster
    ids = _ids(3 * CHUNK + 1)
    sp = sampling(max_new_tokens=16, temperature=0.9, top_p=0.95, seed=99)
    assert (generate(c.decode.stub, ids, sp, prefill_addr=c.prefill.addr).tokens
            == generate(c.decode.stub, ids, sp).tokens)


def test_long_decode_keeps_swa_usage_bounded_then_all_free(cluster):
    c, _ = cluster
    ids, n_new = _ids(2 * CHUNK + 3), 10 * WINDOW
    st = c.decode.stats()
    swa_total = pool_transfer(st, "swa").total
    peak = {"swa": 0, "kv": 0}
    done = threading.Event()

    def poll():
        while not done.is_set():
            s = c.decode.stats()
            for kind in peak:
                p = pool_transfer(s, kind)
                peak[kind] = max(peak[kind], p.total - p.free)
            time.sleep(0.02)

    t = threading.Thread(target=poll)
    t.start()
    try:
        out = generate(c.decode.stub, ids, sampling(max_new_tokens=n_new, ignore_eos=True),
                       prefill_addr=c.prefill.addr)
    finally:
        done.set()
        t.join()
    pools = {p.kind: (p.items, p.bytes, p.entries) for p in out.first.transfer.pools}
    print(f"swa e2e: prompt {len(ids)}, decoded {n_new}: moved (items, bytes, entries) {pools}; "
          f"decode-node peak usage {peak} pages")
    assert len(out.tokens) == n_new and swa_total == 128
    assert 0 < peak["swa"] <= (WINDOW - 1) // PAGE + 2, peak  # the window, not the context
    assert peak["kv"] > (WINDOW - 1) // PAGE + 2  # the full-attention pool grows with the context
    for node in c.nodes:
        st = wait_all_free(node)
        assert st.integrity_ok and {p.kind for p in st.pools} == {"kv", "swa"}


@pytest.mark.parametrize("field, change", [("window", {"window": WINDOW + 1}), ("layers", {"layers": (0,)})])
def test_handshake_refuses_another_window_or_layer_set(cluster, field, change):
    import grpc
    import msgspec
    from pdpair.engine import Engine
    from pdpair.node.layout import engine_layout, layout_to_proto
    from pdpair.proto import pdpair_pb2_grpc as pb_grpc

    c, _ = cluster
    eng = Engine.from_model(c.model_dir, device="cpu", dtype="float32", page_size=PAGE, max_pages=8)
    ours = engine_layout(eng, f"probe-{field}", "127.0.0.1:1", "tcp")  # node ids are bound: one per case
    regions = tuple(msgspec.structs.replace(r, **change) if r.kind == "swa" else r for r in ours.regions)
    stub = pb_grpc.PrefillNodeStub(grpc.insecure_channel(c.prefill.addr))
    ok = stub.Handshake(pb.HandshakeRequest(decode_layout=layout_to_proto(ours)), timeout=30)
    assert {r.kind: r.window for r in ok.prefill_layout.regions} == {"kv": 0, "swa": WINDOW}
    with pytest.raises(grpc.RpcError) as err:
        stub.Handshake(pb.HandshakeRequest(decode_layout=layout_to_proto(msgspec.structs.replace(
            ours, node_id=f"probe-{field}-2", regions=regions))), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"regions[swa].{field}" in err.value.details()
