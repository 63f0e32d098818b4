"""Incremental detokenization: valid text only, and the same text as a one-shot decode."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pdpair.router.detokenizer import IncrementalDetokenizer

from tests.unit._router_fixtures import byte_bpe

TEXTS = ["hello 🙂 world", "東京とパリ", "naïve café 👩‍👩‍👧 done", "🎉", "a\u00e9\U0001f600b"]


def _stream(ids: list[int], step: int = 1) -> list[str]:
    detok = IncrementalDetokenizer(byte_bpe())
    out = [detok.push(ids[i : i + step]) for i in range(0, len(ids), step)]
    return out + [detok.flush()]


def test_multibyte_characters_are_held_until_complete():
    tok = byte_bpe()
    ids = tok.encode("ok 🙂").ids
    emoji_ids = tok.encode("🙂").ids
    assert len(emoji_ids) == 4  # one token per UTF-8 byte: the emoji is split across four tokens
    deltas = _stream(ids)
    assert "".join(deltas) == "ok 🙂"
    assert all("\ufffd" not in d for d in deltas)
    # nothing of the emoji appears until its fourth byte arrives, then all of it at once
    assert deltas[-5:] == ["", "", "", "🙂", ""]


def test_matches_one_shot_decode_on_texts_and_chunkings():
    tok = byte_bpe()
    for text in TEXTS:
        ids = tok.encode(text).ids
        for step in (1, 2, 3, 7):
            deltas = _stream(ids, step)
            assert "".join(deltas) == tok.decode(ids) == text
            assert all("\ufffd" not in d for d in deltas), (text, step, deltas)


def test_special_tokens_are_skipped():
    tok = byte_bpe()
    eos = tok.token_to_id("<|endoftext|>")
    ids = tok.encode("hello").ids + [eos]
    assert "".join(_stream(ids)) == "hello"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=399), max_size=40), st.integers(min_value=1, max_value=5))
def test_any_id_sequence_concatenates_to_the_one_shot_decode(ids, step):
    """Even invalid byte sequences: the held tail comes out on flush, exactly as a one-shot decode has it."""
    tok = byte_bpe()
    assert "".join(_stream(ids, step)) == tok.decode(ids)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=30))
def test_valid_text_never_emits_a_replacement_character(text):
    ids = byte_bpe().encode(text).ids
    deltas = _stream(ids)
    assert "".join(deltas) == byte_bpe().decode(ids)
    if "\ufffd" not in text:
        assert all("\ufffd" not in d for d in deltas)
