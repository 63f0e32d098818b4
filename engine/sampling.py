"""Per-request sampling knobs, validated at construction."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

GREEDY_EPS = 1e-5  # temperatures below this are greedy (dividing logits by them overflows)
MAX_SEED = 2**64 - 1  # seeds are uint64 on the wire
PENALTY_RANGE = 2.0  # OpenAI: presence/frequency penalties in [-2, 2]
BIAS_RANGE = 100.0  # OpenAI: logit_bias values in [-100, 100]


def _finite_in(name: str, value: float, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:  # NaN fails too
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """Sampling knobs of one request.

    temperature 0 (or below GREEDY_EPS) is greedy; top_k 0 or -1 and top_p 1 disable those filters; min_p 0
    disables min-p. A `seed` (any uint64) makes draws depend only on (seed, position), whatever else runs in
    the batch. presence/frequency penalties follow OpenAI over the generated tokens, repetition_penalty
    (1 = off) follows transformers over prompt and output, logit_bias adds to the logits of token ids.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), sorted; a dict is accepted

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        bias = self.logit_bias.items() if isinstance(self.logit_bias, Mapping) else self.logit_bias
        object.__setattr__(self, "logit_bias", tuple(sorted((k, v) for k, v in bias)))
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool):
            raise ValueError(f"max_new_tokens must be an int, got {self.max_new_tokens!r}")
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        _finite_in("temperature", self.temperature, 0.0, math.inf)
        if math.isinf(self.temperature):
            raise ValueError("temperature must be finite, got inf")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < -1:
            raise ValueError(f"top_k must be an int >= -1 (0 or -1 disable it), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _finite_in("min_p", self.min_p, 0.0, 1.0)
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be an int in [0, 2**64 - 1] or None, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be non-negative, got {self.stop_token_ids!r}")
        _finite_in("presence_penalty", self.presence_penalty, -PENALTY_RANGE, PENALTY_RANGE)
        _finite_in("frequency_penalty", self.frequency_penalty, -PENALTY_RANGE, PENALTY_RANGE)
        if (isinstance(self.repetition_penalty, bool) or not isinstance(self.repetition_penalty, int | float)
                or not 0 < self.repetition_penalty < math.inf):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}")
        for tid, value in self.logit_bias:
            if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
                raise ValueError(f"logit_bias keys must be token ids >= 0, got {tid!r}")
            _finite_in(f"logit_bias[{tid}]", value, -BIAS_RANGE, BIAS_RANGE)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    @property
    def uses_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1
                    or self.logit_bias)

    def check_vocab(self, vocab_size: int) -> None:
        """ValueError when a logit_bias token id lies outside [0, vocab_size)."""
        bad = [t for t, _ in self.logit_bias if t >= vocab_size]
        if bad:
            raise ValueError(f"logit_bias: token id {bad[0]} outside the vocabulary [0, {vocab_size})")
