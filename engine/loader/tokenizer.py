"""The tokenizer the engine and router share: a `tokenizers` backend plus chat template and special tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tokenizers

from pdpair.chat_template import render_chat

# end-of-turn markers that chat templates close an assistant message with
CHAT_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


class Tokenizer:
    """`encode` matches Hugging Face `encode(text, add_special_tokens=False)`: special tokens written in the
    text (e.g. `<|im_start|>`) map to their ids, and no BOS/EOS is inserted; `apply_chat_template` renders
    the template (which writes its own special tokens) and encodes the result the same way."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        chat_template: str | None,
        bos_token: str | None,
        eos_token: str | None,
        eos_token_ids: Sequence[int],
    ) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.eos_token_ids = tuple(int(i) for i in eos_token_ids)

    @classmethod
    def from_parts(
        cls,
        tokenizer_json: str,
        chat_template: str | None,
        bos_token: str | None,
        eos_token: str | None,
        eos_token_ids: Sequence[int],
    ) -> Tokenizer:
        """Rebuild from `to_json()` output and the other fields (what a node's ModelInfo carries)."""
        return cls(tokenizers.Tokenizer.from_str(tokenizer_json), chat_template, bos_token, eos_token, eos_token_ids)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.backend.token_to_id(self.bos_token)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any) -> str:
        if not self.chat_template:
            raise ValueError("this model's tokenizer has no chat template")
        return render_chat(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **extra,
        )

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt, **extra))

    def to_json(self) -> str:
        return self.backend.to_str()


def chat_eos_ids(backend: tokenizers.Tokenizer, eos_ids: Sequence[int], chat_template: str | None) -> tuple[int, ...]:
    """`eos_ids` plus the end-of-turn tokens the chat template writes, in order, without duplicates."""
    out = [int(i) for i in eos_ids]
    for token in CHAT_END_TOKENS:
        tid = backend.token_to_id(token)
        if tid is not None and chat_template and token in chat_template and tid not in out:
            out.append(tid)
    return tuple(out)
