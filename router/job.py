"""Turn a validated OpenAI request into a generation job: prompt ids, sampling, stops."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pdpair.proto import pdpair_pb2 as pb
from pdpair.router.errors import ApiError
from pdpair.router.protocol import ChatCompletionRequest, CompletionRequest
from pdpair.router.tokenizer import ModelCard, RouterTokenizer

from pdpair.logfmt import current_rid

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the OpenAI default for /v1/completions


@dataclass(eq=False)
class GenerationJob:
    rid: str
    kind: str  # "chat" | "completion"
    prompt_ids: list[int]
    sampling: pb.SamplingParams
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool
    echo_text: str = ""  # /v1/completions echo=true: the prompt, returned before the completion

    @property
    def response_id(self) -> str:
        return ("chatcmpl-" if self.kind == "chat" else "cmpl-") + self.rid


def _penalties(req: ChatCompletionRequest | CompletionRequest, card: ModelCard, sampling: pb.SamplingParams) -> None:
    """Penalties and logit_bias onto the wire message (0 = off; repetition 1 = off)."""
    sampling.presence_penalty = req.presence_penalty or 0.0
    sampling.frequency_penalty = req.frequency_penalty or 0.0
    sampling.repetition_penalty = req.repetition_penalty or 0.0
    for key, value in (req.logit_bias or {}).items():
        tid = int(key)  # digits only, checked at decoding
        if card.vocab_size and tid >= card.vocab_size:
            raise ApiError(400, f"logit_bias: token id {tid} out of range (vocab {card.vocab_size})",
                           param="logit_bias")
        sampling.logit_bias[tid] = value


def build_job(req: ChatCompletionRequest | CompletionRequest, tok: RouterTokenizer, card: ModelCard) -> GenerationJob:
    """Validate the request against the served model and tokenize it; ApiError(400) on any defect."""
    if req.model != card.model_id:
        raise ApiError(400, f"model {req.model!r} is not served here; this router serves {card.model_id!r}",
                       param="model", code="model_not_found")
    echo = ""
    if isinstance(req, ChatCompletionRequest):
        kind = "chat"
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        prompt_ids = tok.encode_chat(messages)
    else:
        kind = "completion"
        prompt = req.prompt[0] if isinstance(req.prompt, list) and isinstance(req.prompt[0], str) else req.prompt
        if isinstance(prompt, str):
            prompt_ids = tok.encode(prompt)
        else:
            prompt_ids = list(prompt)
            bad = [t for t in prompt_ids if t >= card.vocab_size]
            if card.vocab_size and bad:
                raise ApiError(400, f"token id {bad[0]} out of range (vocab {card.vocab_size})", param="prompt")
        if req.echo:
            echo = prompt if isinstance(prompt, str) else tok.decode(prompt_ids)
    if not prompt_ids:
        raise ApiError(400, "the prompt encodes to zero tokens", param="prompt")
    n_prompt = len(prompt_ids)
    room = card.context_length - n_prompt
    if room <= 0:
        raise ApiError(400, f"prompt is {n_prompt} tokens; the model's context is {card.context_length} tokens",
                       param="messages" if kind == "chat" else "prompt", code="context_length_exceeded")
    budget = req.token_budget()
    if budget is None:
        budget = room if kind == "chat" else min(room, COMPLETIONS_DEFAULT_MAX_TOKENS)
    elif n_prompt + budget > card.context_length:
        raise ApiError(400, f"prompt ({n_prompt} tokens) + max_tokens ({budget}) exceeds the model's context "
                       f"({card.context_length} tokens)", param="max_tokens", code="context_length_exceeded")
    stops = tuple(req.stop_list())
    sampling = pb.SamplingParams(
        max_new_tokens=budget,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        stop=stops,
        stop_token_ids=req.stop_token_ids,
        ignore_eos=req.ignore_eos,
    )
    if req.seed is not None:
        sampling.seed = req.seed
    _penalties(req, card, sampling)
    return GenerationJob(
        rid=current_rid() or uuid.uuid4().hex,  # the HTTP middleware's id, for the logs
        kind=kind,
        prompt_ids=prompt_ids,
        sampling=sampling,
        stops=stops,
        stream=req.stream,
        include_usage=req.include_usage(),
        echo_text=echo,
    )
