"""Page math and state-payload selectors, against brute-force token-level references."""

from __future__ import annotations

import numpy as np
import pytest
from pdpair.transfer import (
    MemoryLayout,
    MemoryRegion,
    ProtocolError,
    build_plan,
    dsa_pages,
    kv_pages,
    kv_to_page_indices,
    mamba_slot,
    num_pages,
    state_seq_len,
    swa_window,
    swa_window_pages,
)

P = 16


def pages_touching(start: int, end: int, page_size: int) -> list[int]:
    """Request page indices holding any token of [start, end), token by token."""
    out: list[int] = []
    for t in range(start, end):
        if t // page_size not in out:
            out.append(t // page_size)
    return out


def test_kv_to_page_indices_roundtrip():
    rng = np.random.default_rng(0)
    table = rng.permutation(200)[:13].astype(np.int32)
    for n_tokens in (1, 15, 16, 17, 13 * P):
        slots = np.array([table[t // P] * P + t % P for t in range(n_tokens)])
        assert kv_to_page_indices(slots, P).tolist() == table[: num_pages(n_tokens, P)].tolist()
    assert kv_to_page_indices(np.arange(5), 1).tolist() == list(range(5))
    with pytest.raises(ValueError, match="page boundary"):
        kv_to_page_indices(np.array([3, 4]), P)


@pytest.mark.parametrize("start,end", [(0, 0), (0, 1), (0, 16), (0, 17), (16, 48), (32, 50), (48, 64)])
def test_kv_pages_matches_token_reference(start, end):
    table = np.arange(100, 110, dtype=np.int32)
    expect = [int(table[i]) for i in pages_touching(start, end, P)]
    assert kv_pages(table, start, end, P).tolist() == expect
    complete = [table[i] for i in pages_touching(start, end, P) if (i + 1) * P <= end]
    assert kv_pages(table, start, end, P, include_partial=False).tolist() == complete


def test_kv_pages_rejects_unaligned_start_and_short_table():
    with pytest.raises(ValueError, match="page-aligned"):
        kv_pages(np.arange(4), 3, 20, P)
    with pytest.raises(ValueError, match=r"pages \[0, 3\) but the page table holds 2"):
        kv_pages(np.arange(2), 0, 33, P)


@pytest.mark.parametrize("window", [1, 5, 16, 20, 32, 40])
def test_swa_window_alignment_at_boundaries(window):
    for seq_len in sorted(
        {0, 1, window - 1, window, window + 1, 2 * window, P - 1, P, P + 1, 3 * P, 3 * P + 1}
    ):
        if seq_len < 0:
            continue
        first, end = swa_window(seq_len, window, P)
        # keys the next query (position seq_len) sees: k > seq_len - window; plus the partial page it writes into
        expect = pages_touching(max(0, seq_len - window + 1), seq_len, P)
        if seq_len % P and seq_len // P not in expect:
            expect.append(seq_len // P)
        assert list(range(first, end)) == expect, (seq_len, window)


def test_swa_window_pages_take_the_held_tail():
    held = np.array([9, 4, 8], dtype=np.int32)  # swa ids of request pages 2, 3, 4 (pages 0, 1 given back)
    # seq_len 70, window 40: keys [31, 70) touch request pages 1..4; page 1 was given back
    with pytest.raises(ValueError, match=r"pages \[1, 5\) not held"):
        swa_window_pages(held, 2, 70, 40, P)
    # window 30: keys [41, 70) → request pages 2..4
    assert swa_window_pages(held, 2, 70, 30, P).tolist() == [9, 4, 8]
    # window 20: keys [51, 70) → pages 3..4
    assert swa_window_pages(held, 2, 70, 20, P).tolist() == [4, 8]


def test_dsa_pages_short_sequences():
    table = np.array([5, 6, 7], dtype=np.int32)
    assert dsa_pages(table, 0, P).tolist() == []
    assert dsa_pages(table, 1, P).tolist() == [5]  # seq_len < one page: one page
    assert dsa_pages(table, P - 1, P).tolist() == [5]
    assert dsa_pages(table, P + 1, P).tolist() == [5, 6]


def test_mamba_slot():
    assert mamba_slot(4).tolist() == [4] and mamba_slot(4).dtype == np.int32
    with pytest.raises(ValueError):
        mamba_slot(-1)


def test_state_seq_len():
    assert state_seq_len(33, 32) == 32 and state_seq_len(20, 32) == 20
    with pytest.raises(ValueError):
        state_seq_len(-1, 3)


def _layout(node: str, kinds: tuple[str, ...]) -> MemoryLayout:
    regions = tuple(MemoryRegion(k, 1 << 20 * (i + 1), 256, 64, "bfloat16") for i, k in enumerate(kinds))
    return MemoryLayout(node, f"{node}:1", "tcp", P, "fp", regions)


@pytest.mark.parametrize("kind", ["kv", "swa", "dsa", "mamba"])
@pytest.mark.parametrize("prompt_pages", [1, 3])
def test_prompt_length_multiple_of_page_size(kind, prompt_pages):
    """SEEDS.md §2: the sampled token in fill_ids crosses a page boundary.

    The decode side registers over the prompt; the prefill side must select
    exactly as many items, or the plan cannot be built.
    """
    prompt = prompt_pages * P
    fill = prompt + 1  # last chunk: fill_ids already holds the sampled token
    window = 20
    prefill_table = np.arange(10, 10 + num_pages(fill, P), dtype=np.int32)
    select = {
        "kv": lambda n: kv_pages(prefill_table, 0, n, P),
        "swa": lambda n: swa_window_pages(prefill_table, 0, n, window, P),
        "dsa": lambda n: dsa_pages(prefill_table, n, P),
        "mamba": lambda n: mamba_slot(3),
    }[kind]
    registered = {  # what decode allocated over origin_input_ids
        "kv": num_pages(prompt, P),
        "swa": int(np.subtract(*swa_window(prompt, window, P)[::-1])),
        "dsa": num_pages(prompt, P),
        "mamba": 1,
    }[kind]
    dst_ids = np.arange(40, 40 + registered, dtype=np.int32)

    src_ids = select(state_seq_len(fill, prompt))
    assert src_ids.size == registered
    plan = build_plan(_layout("p", (kind,)), _layout("d", (kind,)), {kind: (src_ids, dst_ids)})
    assert plan.num_items == registered

    if kind != "mamba":  # the bug being guarded: selecting over fill_ids finds one page more
        naive = select(fill)
        assert naive.size == registered + 1
        with pytest.raises(ProtocolError, match=f"{registered + 1} source items vs {registered}"):
            build_plan(_layout("p", (kind,)), _layout("d", (kind,)), {kind: (naive, dst_ids)})
