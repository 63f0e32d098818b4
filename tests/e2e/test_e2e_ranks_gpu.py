"""Disaggregation with ranks on two GPUs (NCCL, CUDA graphs, the node's own compute stream): a prefill node
with --tp-size 2 writes each attention-TP rank's share of the KV heads from that rank's GPU into the decode
node's same-numbered rank, and a TP=1 prefill node fills a DP-attention decode node's DP ranks. Long prompts in
small chunks make the pages of each chunk move while later chunks compute. The disaggregated tokens equal the
decode node's own colocated ones (fp32 seeded weights of SmolLM2's shape, greedy), and every page comes back.

GPU only: needs two CUDA devices (both nodes put rank r on cuda:r)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.e2e._client import generate, prompt, sampling, wait_all_free
from tests.e2e._nodes import start_cluster

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600),
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")]

PROMPTS = [prompt(1500, salt=21), prompt(37, salt=22), prompt(700, salt=23), prompt(260, salt=24)]
NEW = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.kernels._attention_engine_fixtures import make_seeded_model_dir

    return make_seeded_model_dir(tmp_path_factory.mktemp("seeded-smollm2-fp32"), dtype=torch.float32)


@pytest.mark.parametrize(("prefill_ranks", "decode_ranks"), [
    (("--tp-size", "2"), ("--tp-size", "2")),
    ((), ("--tp-size", "2", "--dp-size", "2", "--enable-dp-attention")),
], ids=["tp2-to-tp2", "tp1-to-dp2"])
def test_rank_nodes_on_two_gpus_equal_colocated(model_dir, prefill_ranks, decode_ranks):
    common = ("--model", str(model_dir), "--device", "cuda", "--max-pages", "2048", "--chunk-size", "64",
              "--disable-prefix-cache")
    cluster = start_cluster(prefill_args=(*common, *prefill_ranks),
                            decode_args=(*common, *decode_ranks, "--local-prefill-below", "0"))
    try:
        stub, prefill = cluster.decode.stub, cluster.prefill.addr
        sp = sampling(NEW, temperature=0.0, ignore_eos=True)
        with ThreadPoolExecutor(len(PROMPTS)) as pool:  # concurrent, so a DP-attention node uses both DP ranks
            colocated = [g.tokens for g in pool.map(lambda p: generate(stub, p, sp), PROMPTS)]
            disagg = list(pool.map(lambda p: generate(stub, p, sp, prefill_addr=prefill), PROMPTS))
        assert all(g.first.prefilled_remotely for g in disagg)
        assert [g.tokens for g in disagg] == colocated
        wait_all_free(cluster.decode, reserved=1)  # a node with ranks keeps item 0 for padding rows
        wait_all_free(cluster.prefill, reserved=1 if prefill_ranks else 0)
    finally:
        codes = cluster.stop()
    assert codes == {"prefill": 0, "decode": 0}, codes
