"""Registration validation on the prefill node: ids a decode peer sends are never trusted."""

from __future__ import annotations

import numpy as np
import pytest
from pdpair.prefill_node.validate import expected_items, validate_registration

NUM = {"kv": 100}


def _check(pools, expected=None):
    return validate_registration(pools, NUM, expected or {"kv": 4})


def test_expected_items_counts_the_partial_tail_page():
    assert expected_items({"kv": None}, 1, 16) == {"kv": 1}
    assert expected_items({"kv": None}, 16, 16) == {"kv": 1}
    assert expected_items({"kv": None}, 17, 16) == {"kv": 2}
    assert expected_items({"kv": None}, 320, 16) == {"kv": 20}


@pytest.mark.parametrize("prompt, window", [
    (5, 20), (16, 20), (19, 20), (20, 20), (21, 20), (48, 20), (49, 20), (320, 33), (320, 1), (17, 1)])
def test_expected_items_of_a_sliding_window_pool_are_the_window_tail(prompt, window):
    # brute force: pages holding any key k > prompt - window (the next query's), plus the page position
    # `prompt` lands in when it is partial
    pages = {k // 16 for k in range(max(0, prompt - window + 1), prompt)} | ({prompt // 16} if prompt % 16 else set())
    assert expected_items({"kv": None, "swa": window}, prompt, 16) == {"kv": -(-prompt // 16), "swa": len(pages)}


def test_valid_registration_keeps_request_order():
    out = _check([("kv", [7, 3, 99, 0])])
    assert out["kv"].tolist() == [7, 3, 99, 0] and out["kv"].dtype == np.int64


@pytest.mark.parametrize("pools, message", [
    ([("kv", [0, 1, 2, 100])], "id 100 out of range"),
    ([("kv", [0, 1, 2, -1])], "id -1 out of range"),
    ([("kv", [0, 1, 2, 2**32 - 1])], "out of range"),
    ([("kv", [5, 6, 5, 7])], "id 5 registered more than once"),
    ([("swa", [0, 1, 2, 3])], "unknown pool kind 'swa'"),
    ([("kv", [0, 1, 2, 3]), ("kv", [4, 5, 6, 7])], "registered twice"),
    ([("kv", [0, 1, 2])], "3 ids registered, the prompt needs exactly 4"),
    ([("kv", [0, 1, 2, 3, 4])], "5 ids registered"),
    ([("kv", [])], "0 ids registered"),
    ([], "lacks pool kinds"),
])
def test_bad_registrations_raise_value_error(pools, message):
    with pytest.raises(ValueError, match=message):
        _check(pools)


def test_ids_are_checked_against_the_peer_region_size():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        validate_registration([("kv", [0, 1, 3])], {"kv": 3}, {"kv": 3})


def test_cached_prefix_must_be_whole_pages_below_the_prompt_and_only_full_context_pools():
    from pdpair.prefill_node.validate import cached_prefix_pages

    full = {"kv": None}
    assert cached_prefix_pages(0, 40, 16, {"kv": None, "swa": 32}) == 0
    assert cached_prefix_pages(32, 40, 16, full) == 2
    for bad in (8, 48, 40):  # not a page multiple; past the prompt; a 40-token prompt with 40 held is no prefill
        with pytest.raises(ValueError, match="cached_prefix_len"):
            cached_prefix_pages(bad, 40, 16, full)
    with pytest.raises(ValueError, match="sliding-window"):
        cached_prefix_pages(16, 40, 16, {"kv": None, "swa": 32})
    # the registration then carries only the pages after the prefix (the partial tail included)
    assert expected_items(full, 40, 16, (), skip_pages=2) == {"kv": 1}
    assert expected_items({"kv": None}, 40, 16, ("mamba",), skip_pages=1) == {"kv": 2, "mamba": 1}
