"""Wire <-> engine conversions done at the servicer edge: sampling knobs, prompts."""

from __future__ import annotations

from pdpair.engine import SamplingParams
from pdpair.proto import pdpair_pb2 as pb


def sampling_from_proto(msg: pb.SamplingParams, vocab_size: int | None = None) -> SamplingParams:
    """Zero values mean "off" on the wire (repetition_penalty: 0 or 1); raises ValueError naming the knob the
    engine rejects, including logit_bias token ids outside `vocab_size` when it is given."""
    sp = SamplingParams(
        max_new_tokens=int(msg.max_new_tokens),
        temperature=float(msg.temperature),
        top_k=int(msg.top_k),
        top_p=float(msg.top_p) if msg.top_p > 0 else 1.0,
        min_p=float(msg.min_p),
        seed=int(msg.seed) if msg.HasField("seed") else None,
        stop=tuple(msg.stop),
        stop_token_ids=tuple(int(t) for t in msg.stop_token_ids),
        ignore_eos=bool(msg.ignore_eos),
        presence_penalty=float(msg.presence_penalty),
        frequency_penalty=float(msg.frequency_penalty),
        repetition_penalty=float(msg.repetition_penalty) if msg.repetition_penalty != 0 else 1.0,
        logit_bias=tuple((int(k), float(v)) for k, v in msg.logit_bias.items()),
    )
    if vocab_size is not None:
        sp.check_vocab(vocab_size)
    return sp


def sampling_to_proto(sp: SamplingParams) -> pb.SamplingParams:
    msg = pb.SamplingParams(
        max_new_tokens=sp.max_new_tokens, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k,
        min_p=sp.min_p, stop=list(sp.stop), stop_token_ids=list(sp.stop_token_ids), ignore_eos=sp.ignore_eos,
        presence_penalty=sp.presence_penalty, frequency_penalty=sp.frequency_penalty,
        repetition_penalty=0.0 if sp.repetition_penalty == 1 else sp.repetition_penalty, logit_bias=dict(sp.logit_bias),
    )
    if sp.seed is not None:
        msg.seed = sp.seed
    return msg


def check_prompt(token_ids: list[int], vocab_size: int, context_length: int) -> None:
    """Never trust a peer's prompt: non-empty, ids in the vocabulary, no longer than the context."""
    if not token_ids:
        raise ValueError("token_ids is empty")
    bad = [t for t in token_ids if t >= vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} out of range [0, {vocab_size})")
    if len(token_ids) > context_length:
        raise ValueError(f"prompt of {len(token_ids)} tokens exceeds the context length {context_length}")
