"""Byte-level BPE tokenizer from GGUF metadata, built the way Hugging Face converts a `gpt2` GGUF tokenizer."""

from __future__ import annotations

from functools import lru_cache

import tokenizers
from pdpair.engine.loader.gguf import GGUFFile
from pdpair.engine.loader.tokenizer import Tokenizer, chat_eos_ids
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

_CONTROL, _USER_DEFINED = 3, 4
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` values whose merges were learned on a split other than GPT-2's
_PRE_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def gguf_tokenizer(f: GGUFFile) -> Tokenizer:
    kind = f.require("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{f.path.name}: unsupported GGUF tokenizer {kind!r}; supported: gpt2 (byte-level BPE)")
    tokens: list[str] = f.require("tokenizer.ggml.tokens")
    types: list[int] = f.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        (tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8"))): i
        for i, tok in enumerate(tokens)
    }
    merges = [tuple(m.split(" ")) for m in f.require("tokenizer.ggml.merges")]
    backend = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                   end_of_word_suffix="", fuse_unk=False)
    )
    split = _PRE_SPLITS.get(f.get("tokenizer.ggml.pre"))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    # control tokens become special (matched whole, skippable); user-defined ones plain added tokens
    control = [AddedToken(t, normalized=False, special=True)
               for t, ty in zip(tokens, types, strict=True) if ty == _CONTROL and set(t) <= alphabet]
    backend.add_special_tokens(control)
    backend.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, ty in zip(tokens, types, strict=True) if ty == _USER_DEFINED and t in vocab])

    def token(key: str) -> str | None:
        tid = f.get(f"tokenizer.ggml.{key}")
        return None if tid is None else tokens[int(tid)]

    template = f.get("tokenizer.chat_template")
    eos_id = f.get("tokenizer.ggml.eos_token_id")
    eos_ids = chat_eos_ids(backend, [] if eos_id is None else [int(eos_id)], template)
    return Tokenizer(backend, template, token("bos_token_id"), token("eos_token_id"), eos_ids)
