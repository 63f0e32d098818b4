"""Stop-string trimming (OpenAI semantics: the stop sequence is not part of the returned text).

The decode node ends generation at a stop string; the router cuts the text at
the first occurrence and, while streaming, holds back any tail that could be
the start of a stop string so that no part of one is ever sent.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopTrimmer:
    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Feed new text; return what is safe to emit. After a stop string everything is dropped."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        cut = self._first_stop(buf)
        # a longer stop string may still begin before that one (stops "<" and "><<" over "><" so far): the text
        # from there is held until the next push or the flush decides
        hold = self._partial_start(buf, len(buf) if cut < 0 else cut)
        if hold < len(buf):
            self._held = buf[hold:]
            return buf[:hold]
        self._held = ""
        if cut >= 0:
            self.stopped = True
            return buf[:cut]
        return buf

    def flush(self) -> str:
        """At the end of the stream: the held-back tail, up to the first stop string in it (held because a
        longer stop string might have begun earlier) or whole (it was not a stop string after all)."""
        held, self._held = self._held, ""
        if self.stopped:
            return ""
        cut = self._first_stop(held)
        self.stopped = cut >= 0
        return held[:cut] if cut >= 0 else held

    def _first_stop(self, buf: str) -> int:
        """Where the first stop string in `buf` begins, or -1."""
        return min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)

    def _partial_start(self, buf: str, before: int) -> int:
        """The first position before `before` from which the rest of `buf` is a proper prefix of some stop
        string (a stop that may still complete), or len(buf)."""
        for k in range(min(self._longest - 1, len(buf)), 0, -1):
            j = len(buf) - k
            if j < before and any(len(s) > k and s.startswith(buf[j:]) for s in self.stops):
                return j
        return len(buf)


def trim_stop(text: str, stops: Sequence[str]) -> str:
    """One-shot form: `text` cut at the first occurrence of any stop string."""
    trimmer = StopTrimmer(stops)
    return trimmer.push(text) + trimmer.flush()
