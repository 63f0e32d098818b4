"""The tokenizer and chat template built from the embedded GGUF against Hugging Face's GGUF tokenizer."""

from __future__ import annotations

import pytest
from _engine_model_fixtures import GGUF_NAME, embedded_dir

pytestmark = pytest.mark.timeout(300)

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. It's 12:45pm; we'll see—don't we?",
    "   leading spaces, trailing spaces   ",
    "tabs\tand\nnew\r\nlines\n\n\n   \n",
    "multiple     inner      spaces and a very\u00a0non-breaking space",
    "def add(a, b):\n    return a + b  # sum\n\nclass Foo:\n\tpass\n",
    'for (int i = 0; i < n; ++i) { printf("%d\\n", arr[i]); }',
    "Les élèves étudient à l'école française. Ça va très bien.",
    "Der Straßenverkehr in München ist überfüllt.",
    "人工智能是计算机科学的一个分支。",
    "日本語のテキストとカタカナ、ひらがな。",
    "مرحبا بالعالم",
    "Здравствуй, мир! Как дела?",
    "emoji 😀🎉👍🏽 and symbols ∑∫√∞ ≠ ≤",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text with <|endoftext|> inside and <file_sep> tokens",
    "1234567890 3.14159 1e-10 0xDEADBEEF",
    "",
]

MESSAGES = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
    [
        {"role": "user", "content": "Bonjour !"},
        {"role": "assistant", "content": "Bonjour, comment puis-je aider ?"},
        {"role": "user", "content": "Écris un haïku.\n\nMerci."},
    ],
]


@pytest.fixture(scope="module")
def hf_tok():
    transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")
    return transformers.AutoTokenizer.from_pretrained(str(embedded_dir()), gguf_file=GGUF_NAME)


@pytest.fixture(scope="module")
def tok():
    from pdpair.engine.loader.gguf import GGUFFile, embedded_gguf_path
    from pdpair.engine.loader.gguf_tokenizer import gguf_tokenizer

    return gguf_tokenizer(GGUFFile(embedded_gguf_path()))


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_hf(tok, hf_tok, text):
    ids = tok.encode(text)
    assert ids == hf_tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == hf_tok.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids) == text  # byte-level BPE is lossless


@pytest.mark.parametrize("messages", MESSAGES)
def test_chat_template_matches_hf(tok, hf_tok, messages):
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.render_chat(messages) == text
    assert tok.apply_chat_template(messages) == hf_tok.encode(text, add_special_tokens=False)
    assert tok.render_chat(messages, add_generation_prompt=False) == hf_tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=False
    )


def test_special_tokens_and_eos(tok, hf_tok):
    assert tok.bos_token == hf_tok.bos_token
    assert tok.eos_token == hf_tok.eos_token
    im_end = hf_tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in tok.eos_token_ids
    assert hf_tok.eos_token_id in tok.eos_token_ids
    assert tok.vocab_size == len(hf_tok)


def test_json_round_trip(tok):
    from pdpair.engine.loader import Tokenizer

    again = Tokenizer.from_parts(tok.to_json(), tok.chat_template, tok.bos_token, tok.eos_token, tok.eos_token_ids)
    for text in TEXTS:
        assert again.encode(text) == tok.encode(text)
    assert again.apply_chat_template(MESSAGES[1]) == tok.apply_chat_template(MESSAGES[1])
    assert again.eos_token_ids == tok.eos_token_ids


def test_template_errors_are_value_errors(tok):
    from pdpair.chat_template import render_chat

    with pytest.raises(ValueError, match="no roles"):
        render_chat("{{ raise_exception('no roles') }}", [])
    with pytest.raises(ValueError, match="messages"):
        tok.apply_chat_template("not a list")
