"""The references the model-family tests compare against: transformers' greedy continuation, and the engine's
own chunked prefill through its real pools and backend outside the scheduler (every position's logits, for
teacher-forced comparisons); and the randomisation of the tiny checkpoints they are built from."""

from __future__ import annotations

import torch


def randomise_norms_and_biases(model, extra: dict[str, tuple[float, float]] | None = None) -> None:  # noqa: ANN001
    """transformers initialises norms to 1 and biases to 0: draw them (norm weights 1 + 0.2 N, biases 0.3 N) so
    that a checkpoint exercises them; `extra` maps other parameter-name suffixes to (offset, scale)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
            else:
                for suffix, (offset, scale) in (extra or {}).items():
                    if name.endswith(suffix):
                        p.copy_(offset + scale * torch.randn_like(p))
                        break


def chunked_prefill_logits(eng, ids: list[int], chunk: int) -> tuple[torch.Tensor, int]:  # noqa: ANN001
    """Prefill `ids` on `eng` in chunks of `chunk` tokens; returns the logits of every position and the
    request-table row (its pages, its state slot when the model has one, and the row stay allocated)."""
    from pdpair.engine.batch import ForwardBatch, ForwardContext, ForwardMode

    ps = eng.config.page_size
    row = eng.req_to_token.alloc()
    for kind in eng.pools.paged_kinds:
        eng.req_to_token.assign_pages(row, 0, eng.pools.allocator(kind).alloc(-(-len(ids) // ps)), kind)
    if eng.mamba_pool is not None:
        eng.mamba_pool.bind(row, int(eng.pools.allocator("mamba").alloc(1)[0]))
    runner, out = eng.runner, []
    with torch.inference_mode():
        for start in range(0, len(ids), chunk):
            n = min(chunk, len(ids) - start)
            batch = ForwardBatch.build(ForwardMode.EXTEND, [row], [start], [n], ids[start:start + n],
                                       eng.req_to_token.table)
            runner.backend.prepare(batch)
            out.append(runner.model(batch.input_ids, batch.positions,
                                    ForwardContext(runner.backend, batch, torch.arange(n))))
    return torch.cat(out), row


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:  # noqa: ANN001 (a transformers causal LM)
    """transformers' greedy continuation of `ids`, `n` tokens, ignoring EOS."""
    import transformers

    gen = transformers.GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    hf.generation_config.eos_token_id = None
    with torch.inference_mode():
        return hf.generate(torch.tensor([ids]), generation_config=gen)[0, len(ids):].tolist()
