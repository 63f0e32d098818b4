"""prefill-node and decode-node on `--device cuda`: pages leave one GPU pool through Mooncake and land in
another, and the disaggregated output equals the decode node's own colocated output.

GPU only (skipped elsewhere). The weights are seeded with SmolLM2-135M's shape: the embedded GGUF does not
travel to GPU machines.
"""

from __future__ import annotations

import pytest

from tests.e2e._client import generate, prompt, sampling, wait_all_free
from tests.e2e._nodes import start_cluster

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    from tests.kernels._attention_engine_fixtures import make_seeded_model_dir

    model_dir = make_seeded_model_dir(tmp_path_factory.mktemp("seeded-smollm2"))
    common = ("--model", str(model_dir), "--device", "cuda", "--max-pages", "4096", "--chunk-size", "64",
              "--disable-prefix-cache")  # whole-prompt transfers are compared
    cluster = start_cluster(prefill_args=common, decode_args=(*common, "--local-prefill-below", "0"))
    yield cluster
    codes = cluster.stop()
    assert codes == {"prefill": 0, "decode": 0}, codes


@pytest.mark.parametrize("length", [5, 160, 327, 1500])  # 1500: 24 chunks, sent while later chunks compute
@pytest.mark.parametrize("seed", [None, 7])
def test_disaggregated_equals_colocated_on_cuda(gpu_cluster, length, seed):
    stub, prefill = gpu_cluster.decode.stub, gpu_cluster.prefill.addr
    ids = prompt(length, salt=length)
    sp = sampling(max_new_tokens=24, temperature=0.0 if seed is None else 0.8, seed=seed, ignore_eos=True)
    colocated = generate(stub, ids, sp)
    disagg = generate(stub, ids, sp, prefill_addr=prefill)
    assert disagg.first.prefilled_remotely and not colocated.first.prefilled_remotely
    pages = -(-length // 16)
    assert disagg.first.transfer.items == pages and disagg.first.transfer.bytes > 0
    assert disagg.tokens == colocated.tokens, (disagg.tokens, colocated.tokens)
    assert len(disagg.tokens) == 24


def test_pages_return_on_both_gpu_nodes(gpu_cluster):
    stub, prefill = gpu_cluster.decode.stub, gpu_cluster.prefill.addr
    generate(stub, prompt(200, salt=3), sampling(max_new_tokens=8), prefill_addr=prefill)
    for node in gpu_cluster.nodes:
        wait_all_free(node)


@pytest.fixture(scope="module")
def gpu_swa_cluster(tmp_path_factory):
    """Both daemons on a tiny seeded Gemma 3 text model (sliding window 100, page 16) on CUDA."""
    from tests.swa_models import save_tiny_swa

    model_dir = tmp_path_factory.mktemp("seeded-gemma3")
    save_tiny_swa("gemma3", 100, model_dir, max_positions=2048)
    common = ("--model", str(model_dir), "--device", "cuda", "--max-pages", "1024", "--chunk-size", "64")
    cluster = start_cluster(prefill_args=common, decode_args=(*common, "--local-prefill-below", "0"))
    yield cluster
    codes = cluster.stop()
    assert codes == {"prefill": 0, "decode": 0}, codes


@pytest.mark.parametrize("length", [60, 327])
def test_sliding_window_model_disaggregated_equals_colocated_on_cuda(gpu_swa_cluster, length):
    stub, prefill = gpu_swa_cluster.decode.stub, gpu_swa_cluster.prefill.addr
    ids = [3 + (37 * i + length) % 500 for i in range(length)]
    sp = sampling(max_new_tokens=150, temperature=0.0, ignore_eos=True)  # decodes past the window
    colocated = generate(stub, ids, sp)
    disagg = generate(stub, ids, sp, prefill_addr=prefill)
    assert disagg.tokens == colocated.tokens
    pools = {p.kind: p for p in disagg.first.transfer.pools}
    assert pools["kv"].items == -(-length // 16)
    assert pools["swa"].items == -(-length // 16) - max(0, length - 99) // 16
    for node in gpu_swa_cluster.nodes:
        wait_all_free(node)
