"""User-input checks done at submit time: ValueError with a clear message, nothing else disturbed."""

from __future__ import annotations

from pdpair.engine.request import Request


class RequestValidator:
    def __init__(self, vocab_size: int, context_length: int, page_size: int, total_pages: int) -> None:
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.page_size = page_size
        self.total_pages = total_pages

    def check(self, req: Request) -> None:
        n = req.prompt_len
        if n > self.context_length:
            raise ValueError(
                f"request {req.rid!r}: prompt has {n} tokens, longer than the model context ({self.context_length})")
        bad = [t for t in req.input_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(
                f"request {req.rid!r}: token id {bad[0]} outside the vocabulary [0, {self.vocab_size})")
        pages = -(-(n + 1) // self.page_size)
        if pages > self.total_pages:
            raise ValueError(
                f"request {req.rid!r}: prompt of {n} tokens needs {pages} KV pages, the pool has {self.total_pages}")

    def check_token(self, tok: int) -> None:
        if not 0 <= int(tok) < self.vocab_size:
            raise ValueError(f"token id {tok} outside the vocabulary [0, {self.vocab_size})")
