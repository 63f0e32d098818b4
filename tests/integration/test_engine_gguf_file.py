"""A bare llama .gguf file written with the `gguf` package the way llama.cpp's converter does (q/k rows
permuted, llama3 rope as a `rope_freqs` tensor, untied output, byte-level BPE vocabulary), loaded through
`load_model(path)` and compared with the Hugging Face model it was written from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _engine_model_fixtures import dense_logits

pytestmark = pytest.mark.timeout(300)
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")

ROPE = {"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf `LlamaModel.permute`."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf_name: str) -> str:
    glob = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}
    if hf_name in glob:
        return glob[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    stem, suffix = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER[stem]}.{suffix}"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    from gguf import GGUFWriter
    from pdpair.engine.loader.gguf import GGUFFile, embedded_gguf_path

    src = GGUFFile(embedded_gguf_path())
    tokens = src.require("tokenizer.ggml.tokens")
    cfg = transformers.LlamaConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.3,
        tie_word_embeddings=False, rope_parameters=dict(ROPE), bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(7)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))

    path = tmp_path_factory.mktemp("gguf") / "tiny-llama3.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(ROPE["rope_theta"])
    w.add_rope_dimension_count(16)
    w.add_rope_scaling_orig_ctx_len(ROPE["original_max_position_embeddings"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(src.require("tokenizer.ggml.token_type"))
    w.add_token_merges(src.require("tokenizer.ggml.merges"))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(src.require("tokenizer.chat_template"))
    # llama.cpp stores llama3 scaling as per-frequency divisors of the unscaled inverse frequencies
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    base = 1.0 / (ROPE["rope_theta"] ** (torch.arange(0, 16, 2).float() / 16))
    w.add_tensor("rope_freqs.weight", (base / scaled).numpy().astype(np.float32))
    for name, p in hf.state_dict().items():
        arr = p.detach().float().numpy()
        if ".q_proj." in name:
            arr = _permute(arr, 4)
        elif ".k_proj." in name:
            arr = _permute(arr, 2)
        w.add_tensor(_gguf_name(name), np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf, path


def test_gguf_file_config_and_logits_match_hf(written):
    from pdpair.engine.loader import load_model
    from pdpair.engine.model_config import RopeScaling

    hf, path = written
    lm = load_model(str(path))
    assert lm.model_id == "tiny-llama3"
    assert lm.config.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 32)
    assert not lm.config.tie_word_embeddings and lm.config.eos_token_ids == (2,)
    seqs = [list(range(300, 400)), [5, 900, 17, 40000, 3, 77]]  # positions past 32: the scaled regime
    for seq, got in zip(seqs, dense_logits(lm.model, seqs), strict=True):
        with torch.inference_mode():
            ref = hf(torch.tensor([seq])).logits[0].float()
        scale = ref.abs().max().item()
        assert (got - ref).abs().max().item() < 1e-4 * scale


def _parsed_as_the_gguf_package_reads_it(path) -> None:
    """Our GGUF parser against the gguf package's `GGUFReader`: every metadata value, and every tensor's
    name, type, shape and data view (dtype, shape, bytes)."""
    from gguf import GGUFReader
    from pdpair.engine.loader.gguf_parse import GGUFContents

    ours, ref = GGUFContents(path), GGUFReader(str(path))
    want = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}  # the reader's header
    assert ours.fields == want
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors, strict=True):
        assert a.tensor_type == b.tensor_type and a.shape == tuple(int(d) for d in b.shape), a.name
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape, a.name
        assert np.array_equal(a.data, b.data), a.name


def test_gguf_parser_reads_what_the_gguf_package_reads(written):
    """The written file (F32 tensors, llama3 `rope_freqs`, strings, arrays) and the embedded model (Q8_0 and
    other quantized tensors, a 49k-token vocabulary and its merges)."""
    from pdpair.engine.loader.gguf import embedded_gguf_path

    _parsed_as_the_gguf_package_reads_it(written[1])
    _parsed_as_the_gguf_package_reads_it(embedded_gguf_path())


def test_gguf_parser_refuses_what_it_cannot_read(tmp_path):
    from pdpair.engine.loader.gguf_parse import GGUFContents

    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGML" + bytes(40))
    with pytest.raises(ValueError, match="not a GGUF file"):
        GGUFContents(bad)
    bad.write_bytes(b"GGUF" + (7).to_bytes(4, "little") + bytes(16))
    with pytest.raises(ValueError, match="version 7"):
        GGUFContents(bad)
