"""Incremental detokenization that only ever emits complete UTF-8 text.

The prefix-offset / read-offset technique: decode a short window of ids that
ends with the new ones, and emit what the window adds beyond the text already
emitted for its prefix. A window whose decode ends in U+FFFD ends inside a
multi-byte character (a byte-level BPE token can hold part of an emoji), so
nothing is emitted until a later token completes it; `flush` emits whatever is
left when the stream ends.
"""

from __future__ import annotations

from collections.abc import Iterable

import tokenizers

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turn a growing list of token ids into text deltas; their concatenation equals a one-shot decode."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start: text up to read_offset is already emitted
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip) if ids else ""

    def push(self, new_ids: Iterable[int]) -> str:
        """Append ids; return the text they complete ("" while a character is still open)."""
        self.ids.extend(new_ids)
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT):
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        return new_text[len(prefix_text) :]

    def flush(self) -> str:
        """The text held back at the end of the stream (a truly invalid tail decodes to U+FFFD)."""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text) :]
