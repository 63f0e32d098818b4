"""A small byte-level BPE tokenizer trained in-process (no model files), for router unit tests."""

from __future__ import annotations

import functools

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "pack my box with five dozen liquor jugs",
    "ça va très bien, merci — naïve café",
    "hello world, hello router, hello tokens",
] * 20


@functools.lru_cache(maxsize=1)
def byte_bpe() -> tokenizers.Tokenizer:
    """Byte-level BPE: emoji and CJK (absent from the corpus) split into single-byte tokens."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok
