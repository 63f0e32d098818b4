"""When a request is done: EOS ids, stop token ids, stop strings, max_new_tokens, context end."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pdpair.engine.request import Request


class StopChecker:
    def __init__(self, eos_token_ids: Sequence[int], context_length: int,
                 decode: Callable[[list[int]], str] | None) -> None:
        self.eos = frozenset(eos_token_ids)
        self.context_length = context_length
        self.decode = decode

    def finish_reason(self, req: Request) -> str | None:
        """Checked after each new token; the last output id is the new one."""
        sp = req.sampling
        tok = req.output_ids[-1]
        if (not sp.ignore_eos and tok in self.eos) or tok in sp.stop_token_ids:
            return "stop"
        if sp.stop and self._hits_stop_string(req):
            return "stop"
        n = len(req.output_ids)  # length_reached, inlined: this runs for every request of every step
        if n >= sp.max_new_tokens or len(req.input_ids) + n >= self.context_length:
            return "length"
        return None

    def length_reached(self, req: Request) -> bool:
        """No token may follow the last output id (max_new_tokens or the context is used up), whatever it is."""
        n = len(req.output_ids)
        return n >= req.sampling.max_new_tokens or len(req.input_ids) + n >= self.context_length

    def length_reached_set(self, reqs: list[Request]) -> set[Request]:
        """The requests of `reqs` that `length_reached` says yes to (one pass, no call per request)."""
        ctx = self.context_length
        return {r for r in reqs if len(r.output_ids) >= r.sampling.max_new_tokens
                or len(r.input_ids) + len(r.output_ids) >= ctx}

    def _hits_stop_string(self, req: Request) -> bool:
        assert self.decode is not None, "stop strings need a tokenizer"
        # every token decodes to at least one byte, so 4 tokens per character cover any stop string
        longest = max(len(s) for s in req.sampling.stop)
        tail = self.decode(req.output_ids[-(4 * longest + 4):])
        return any(s in tail for s in req.sampling.stop)
