"""Which CUDA graph every rank replays for a decode slot, free of any device (SEEDS.md §4 under graphs).

Graphs are keyed by the GLOBAL padded batch size: the bucket is chosen from every DP rank's padded count, so
every rank replays a graph of the same size and the collectives captured inside it line up. Each rank fills
its own real rows and pads the rest of the bucket; a rank without decode rows (an idle batch) replays the
same bucket with no real rows. Under graphs the DP gather is always MAX_LEN with every DP rank at the bucket
(static shapes); the gather is all-gather over tp, the scatter a static slice.
"""

from __future__ import annotations

from pdpair.engine.distributed.dp_plan import GatherInfo, GatherMode


def rank_buckets(buckets: tuple[int, ...], max_batch_size: int, multiple: int) -> tuple[int, ...]:
    """Capture sizes: `buckets` up to `max_batch_size` rounded up to multiples of `multiple` (the attention-TP
    size under DP attention, so that a bucket splits evenly over the attention group), deduplicated, sorted."""
    if max_batch_size < 1 or multiple < 1:
        raise ValueError(f"max_batch_size ({max_batch_size}) and multiple ({multiple}) must be positive")
    top = -(-max_batch_size // multiple) * multiple
    return tuple(sorted({min(top, -(-b // multiple) * multiple) for b in buckets if b < max_batch_size} | {top}))


def graph_bucket(info: GatherInfo | None, local_tokens: int, buckets: tuple[int, ...]) -> int | None:
    """The bucket this decode slot replays, or None when the largest global count has no graph (then every
    rank runs the slot eagerly). `info`: the slot's gather info (None without DP attention: then the count is
    the rank's own batch, which its whole attention group shares)."""
    need = max(info.global_num_tokens) if info is not None else local_tokens
    if need <= 0:
        return None
    return next((b for b in buckets if b >= need), None)


def graph_info(info: GatherInfo | None, bucket: int) -> GatherInfo | None:
    """The gather info a replay of `bucket` was captured with: every DP rank at `bucket` rows, MAX_LEN."""
    if info is None:
        return None
    dp = len(info.global_num_tokens)
    return GatherInfo((bucket,) * dp, info.real_num_tokens, info.dp_rank, GatherMode.MAX_LEN)


def capture_info(bucket: int, dp_size: int, dp_rank: int) -> GatherInfo:
    """The gather info set while capturing `bucket` (the real counts do not enter the graph)."""
    return GatherInfo((bucket,) * dp_size, (bucket,) * dp_size, dp_rank, GatherMode.MAX_LEN)
