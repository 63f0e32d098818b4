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
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buf[:cut]
        hold = self._partial_suffix(buf)
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """At the end of the stream the held-back tail was not a stop string after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest tail of `buf` that is a proper prefix of some stop string."""
        for k in range(min(self._longest - 1, len(buf)), 0, -1):
            tail = buf[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0


def trim_stop(text: str, stops: Sequence[str]) -> str:
    """One-shot form: `text` cut at the first occurrence of any stop string."""
    trimmer = StopTrimmer(stops)
    return trimmer.push(text) + trimmer.flush()
