"""Vocab-parallel embedding and LM head on two ranks (gloo; NCCL on two GPUs): each rank holds only its slice of
the vocabulary, and the logits every rank gets equal one rank's (SmolLM2, tied, 49152 rows: an even split) and
transformers' (a tiny random Llama, untied, 1001 rows: the second rank's slice ends in a padded row)."""

from __future__ import annotations

import queue
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pdpair.engine import Engine, SamplingParams
from pdpair.engine.distributed import RankGroup, RankSpec, RankTopology
from pdpair.engine.distributed.groups import host_rendezvous
from pdpair.engine.distributed.rank_main import build_rank_engine

from tests._oracle import chunked_prefill_logits, hf_greedy, randomise_norms_and_biases
from tests.unit._spawn_fixtures import ValueQueue

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")

SEQS = [[5, 900, 17, 1000, 3, 77, 123, 8, 8, 8, 310, 2, 999, 500, 501], list(range(100, 160, 3))]
CHUNK = 6  # several extend chunks per sequence: the cached prefix is read back through the split heads
TINY_VOCAB = 1001  # odd: two ranks of 501 rows, the last one padding
HIDDEN = 64


def _tiny_checkpoint(root):
    """A tiny random untied Llama (fp32, randomised norms and biases) saved by transformers, word-level tokens."""
    import tokenizers

    torch.manual_seed(4321)
    cfg = transformers.LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.3,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, attention_bias=True)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    randomise_norms_and_biases(hf)
    hf.save_pretrained(root)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"<t{i}>": i for i in range(TINY_VOCAB)}, unk_token="<t0>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(root / "tokenizer.json"))
    return hf, str(root)


def _worker(rank: int, spec: RankSpec, results) -> None:
    """Build rank `rank`'s engine and run the same teacher-forced prefills as its peer (collectively)."""
    torch.set_num_threads(1)
    engine, runner, topo = build_rank_engine(spec, rank)
    model = runner.model
    params = {name: (tuple(p.shape), p.nbytes) for name, p in model.named_parameters()}
    embed = model.embed_tokens.weight
    head = model.vocab_head
    out = dict(params=params, tied=head is not None and head.weight is embed, padded_zero=bool((embed[500:] == 0).all()),
               logits=[chunked_prefill_logits(engine, seq, CHUNK)[0].cpu() for seq in SEQS])
    results.put((rank, out))
    dist.destroy_process_group()


def _run_ranks(spec: RankSpec) -> dict:
    ctx = mp.get_context("spawn")
    results = ValueQueue()
    procs = [ctx.Process(target=_worker, args=(r, spec, results)) for r in range(2)]
    for p in procs:
        p.start()
    got: dict = {}
    deadline = time.monotonic() + 240
    try:
        while len(got) < len(procs):
            try:
                rank, out = results.get(timeout=1)
                got[rank] = out
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    pytest.fail(f"the rank workers did not report (exit codes {[p.exitcode for p in procs]})")
        return got
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()


def _vocab_params(params: dict) -> dict:
    return {n: v for n, v in params.items() if n.startswith(("embed_tokens", "vocab_head", "lm_head"))}


def _assert_only_slices(got: dict, vocab: int, hidden: int, tables: int) -> None:
    """Each rank's vocabulary parameters are `tables` slices of ceil(vocab / 2) rows; no parameter is whole."""
    rows = -(-vocab // 2)
    for rank, out in got.items():
        vocab_params = _vocab_params(out["params"])
        assert [shape for shape, _ in vocab_params.values()] == [(rows, hidden)] * tables, (rank, vocab_params)
        assert sum(b for _, b in vocab_params.values()) == tables * rows * hidden * 4
        assert not [n for n, (shape, _) in out["params"].items() if shape and shape[0] >= vocab], rank


def test_smollm2_ranks_hold_half_the_tied_vocabulary_and_match_one_rank():
    ref = Engine.from_model(max_pages=64)
    expected = [chunked_prefill_logits(ref, seq, CHUNK)[0] for seq in SEQS]
    cfg = ref.model_config
    vocab, hidden = cfg.vocab_size, cfg.hidden_size
    whole = sum(p.nbytes for p in ref.runner.model.parameters())
    del ref
    got = _run_ranks(RankSpec(RankTopology(2, 1, False), host_rendezvous(), max_pages=64))
    _assert_only_slices(got, vocab, hidden, tables=1)  # tied: the head is the embedding's slice
    assert all(out["tied"] for out in got.values())
    # the two ranks' vocabulary bytes add up to one whole table: a rank keeping it whole would hold 2x
    assert sum(sum(b for _, b in _vocab_params(o["params"]).values()) for o in got.values()) == vocab * hidden * 4
    assert all(sum(b for _, b in o["params"].values()) < 0.6 * whole for o in got.values())  # whole embedding: 0.64
    for i, ref_logits in enumerate(expected):
        assert torch.equal(got[0]["logits"][i], got[1]["logits"][i])  # one gather: every rank samples alike
        assert got[0]["logits"][i].shape == (len(SEQS[i]), vocab)
        scale = ref_logits.abs().max().item()
        err = (got[0]["logits"][i] - ref_logits).abs().max().item()
        assert err < 1e-4 * scale, f"seq {i}: max |diff| {err:.3g} vs logits scale {scale:.3g}"


def _tiny_case(tmp_path, device: str):
    """(HF model, checkpoint path) after checking the two ranks' slices and logits against transformers."""
    hf, path = _tiny_checkpoint(tmp_path / "tiny")
    got = _run_ranks(RankSpec(RankTopology(2, 1, False), host_rendezvous(), model=path, device=device,
                              dtype="float32", max_pages=64, max_running_requests=8,
                              decode_graphs="off"))  # prefill logits only: no decode graphs to capture
    _assert_only_slices(got, TINY_VOCAB, HIDDEN, tables=2)  # untied: an embedding slice and a head slice
    assert not got[0]["tied"] and not got[1]["tied"]
    assert got[1]["padded_zero"]  # rank 1's row 500 is padding (vocab 1001 padded to 1002)
    for i, seq in enumerate(SEQS):
        with torch.inference_mode():
            ref = hf(torch.tensor([seq])).logits[0].float()
        assert torch.equal(got[0]["logits"][i], got[1]["logits"][i])
        assert got[0]["logits"][i].shape == ref.shape == (len(seq), TINY_VOCAB)  # the padded column dropped
        scale = ref.abs().max().item()
        err = (got[0]["logits"][i] - ref).abs().max().item()
        # CUDA: the Triton attention kernels multiply fp32 at TF32 (about 1e-3 relative); a wrong slice or gather
        # would be off by the logits' whole scale
        rel = 1e-4 if device == "cpu" else 5e-3
        assert err < rel * scale, f"seq {i}: max |diff| {err:.3g} vs logits scale {scale:.3g}"
    return hf, path


def test_padded_vocabulary_logits_and_greedy_tokens_match_transformers(tmp_path):
    hf, path = _tiny_case(tmp_path, "cpu")
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    spec = RankSpec(RankTopology(2, 1, False), host_rendezvous(), model=path, dtype="float32", max_pages=64)
    with RankGroup(spec) as group:  # the follower computes the leader's logits rows for the gather
        outs, _ = group.generate(SEQS, greedy)
    assert [list(o.token_ids) for o in outs] == [hf_greedy(hf, seq, 12) for seq in SEQS]
    assert group.close() == [0, 0]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_nccl_padded_vocabulary_logits_match_transformers(tmp_path):
    _tiny_case(tmp_path, "cuda")
