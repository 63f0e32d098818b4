"""The router's tokenizer and chat template, built from a node's ModelInfo (no model files needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import tokenizers
from pdpair.proto import pdpair_pb2 as pb
from pdpair.router.errors import ApiError

from pdpair.chat_template import TemplateError, compile_template, render_chat


@dataclass(frozen=True)
class ModelCard:
    """What the router knows about the served model."""

    model_id: str
    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    page_size: int


class RouterTokenizer:
    def __init__(self, tokenizer: tokenizers.Tokenizer, chat_template: str, bos_token: str, eos_token: str):
        self.tokenizer = tokenizer
        self._template = chat_template
        if chat_template:
            compile_template(chat_template)  # a template that does not compile fails the router's startup
        self.bos_token = bos_token
        self.eos_token = eos_token

    @classmethod
    def from_model_info(cls, info: pb.ModelInfoResponse) -> RouterTokenizer:
        tok = tokenizers.Tokenizer.from_str(info.tokenizer_json)
        return cls(tok, info.chat_template, info.bos_token, info.eos_token)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        # encode_batch releases the GIL while it works (encode does not): the event loop keeps running
        return self.tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def render_chat(self, messages: Sequence[dict]) -> str:
        """The prompt text for `messages` with the generation prompt appended."""
        if not self._template:
            raise ApiError(400, "the served model has no chat template: use /v1/completions", param="messages")
        try:
            return render_chat(self._template, list(messages), bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as exc:
            raise ApiError(400, f"chat template rejected the messages: {exc}", param="messages") from None

    def encode_chat(self, messages: Sequence[dict]) -> list[int]:
        # The template already wrote every special token, as Hugging Face's apply_chat_template assumes.
        return self.encode(self.render_chat(messages), add_special_tokens=False)


def model_card(info: pb.ModelInfoResponse) -> ModelCard:
    return ModelCard(
        model_id=info.model_id,
        context_length=info.context_length,
        vocab_size=info.vocab_size,
        eos_token_ids=tuple(info.eos_token_ids),
        page_size=info.page_size,
    )
