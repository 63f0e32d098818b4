"""Layouts with one region set per DP rank: lookup, validation, compatibility and the protobuf round trip."""

from __future__ import annotations

import pytest
from pdpair.node.layout import layout_from_proto, layout_to_proto
from pdpair.transfer import LayoutMismatch, MemoryLayout, MemoryRegion, check_compatible


def _layout(*regions: MemoryRegion) -> MemoryLayout:
    return MemoryLayout("decode-1", "127.0.0.1:1", "tcp", 16, "fp", tuple(regions))


KV0 = MemoryRegion("kv", 1 << 30, 1024, 10, "float32", dp_rank=0)
KV1 = MemoryRegion("kv", 2 << 30, 1024, 12, "float32", dp_rank=1)


def test_each_dp_rank_has_its_own_region_set():
    layout = _layout(KV0, KV1)
    assert layout.dp_ranks == (0, 1) and layout.kinds == ("kv",)
    assert layout.region("kv", 1) is KV1 and layout.region("kv") is KV0
    one = layout.for_dp_rank(1)
    assert one.dp_ranks == (0,) and one.session_id == layout.session_id
    assert (one.region("kv").base_ptr, one.region("kv").num_items) == (KV1.base_ptr, KV1.num_items)
    with pytest.raises(ValueError, match=r"DP rank 2 has no region set .* \(DP ranks \[0, 1\]\)"):
        layout.for_dp_rank(2)


def test_a_kind_twice_for_one_rank_or_missing_for_another_is_refused():
    with pytest.raises(ValueError, match="twice"):
        _layout(KV0, MemoryRegion("kv", 3 << 30, 1024, 10, "float32", dp_rank=0))
    with pytest.raises(ValueError, match="DP rank 1 lacks"):
        _layout(KV0, MemoryRegion("swa", 1 << 20, 64, 10, "float32"), KV1)


def test_protobuf_keeps_the_dp_rank():
    layout = _layout(KV0, KV1)
    assert layout_from_proto(layout_to_proto(layout)) == layout


def test_compatibility_checks_every_dp_rank_set_on_either_side():
    prefill = _layout(KV0)
    check_compatible(prefill, _layout(KV0, KV1))
    skewed = _layout(KV0, MemoryRegion("kv", 2 << 30, 512, 12, "float32", dp_rank=1))
    for a, b in ((prefill, skewed), (skewed, prefill)):
        with pytest.raises(LayoutMismatch, match=r"regions\[kv\].item_bytes"):
            check_compatible(a, b)


def test_protobuf_keeps_the_attention_tp_size_and_reads_an_unset_one_as_one():
    layout = MemoryLayout("decode-1", "127.0.0.1:1", "tcp", 16, "fp", (KV0,), attn_tp_size=2)
    assert layout_from_proto(layout_to_proto(layout)).attn_tp_size == 2
    old = layout_to_proto(_layout(KV0))
    old.ClearField("attn_tp_size")  # a peer that does not send the field
    assert layout_from_proto(old).attn_tp_size == 1
    with pytest.raises(ValueError, match="attn_tp_size must be >= 1"):
        MemoryLayout("decode-1", "127.0.0.1:1", "tcp", 16, "fp", (KV0,), attn_tp_size=0)


def test_a_different_attention_tp_size_is_refused_naming_both_sizes():
    """Checked before the fingerprint: a different head split also changes the KV heads the fingerprint
    states, and the refusal must name the cause."""
    prefill = MemoryLayout("prefill-1", "127.0.0.1:2", "tcp", 16, "fp-kvh3", (KV0,))
    decode = MemoryLayout("decode-1", "127.0.0.1:1", "tcp", 16, "fp-kvh2", (KV0,), attn_tp_size=2)
    with pytest.raises(LayoutMismatch, match=r"attn_tp_size: local 1, remote 2") as exc:
        check_compatible(prefill, decode)
    assert (exc.value.field, exc.value.local, exc.value.remote) == ("attn_tp_size", 1, 2)
    with pytest.raises(LayoutMismatch, match=r"regions.attn_tp_rank: local \[0\], remote \[0\]"):
        check_compatible(decode, MemoryLayout("prefill-2", "127.0.0.1:3", "tcp", 16, "fp-kvh2", (KV0,),
                                              attn_tp_size=2))  # neither lists attention-TP rank 1's pools


def test_equal_attention_tp_sizes_pair_share_by_share():
    """SmolLM2's 3 KV heads on 2 ranks: rank 0 holds 2, rank 1 holds 1, so the shares' items differ in size;
    each is compared with the other side's share of the same attention-TP rank."""
    def ranked(node, session, b0, b1, share1=512):
        return MemoryLayout(node, session, "tcp", 16, "fp-kvh2", (
            MemoryRegion("kv", b0, 1024, 10, "float32"),
            MemoryRegion("kv", b1, share1, 10, "float32", attn_tp_rank=1, session_id=session[:-1] + "9")),
            attn_tp_size=2)

    prefill, decode = ranked("p", "127.0.0.1:2", 1 << 30, 2 << 30), ranked("d", "127.0.0.1:1", 3 << 30, 4 << 30)
    check_compatible(prefill, decode)
    assert decode.for_dp_rank(0, 1).session_id == "127.0.0.1:9"
    assert decode.for_dp_rank(0, 1).region("kv").item_bytes == 512
    with pytest.raises(LayoutMismatch, match=r"regions\[kv\].item_bytes: local 512, remote 256"):
        check_compatible(prefill, ranked("d2", "127.0.0.1:1", 3 << 30, 4 << 30, share1=256))


def test_each_region_set_names_the_session_that_serves_it():
    rank1 = MemoryRegion("kv", 2 << 30, 1024, 12, "float32", dp_rank=1, session_id="127.0.0.1:7")
    layout = _layout(KV0, rank1)
    assert layout.for_dp_rank(1).session_id == "127.0.0.1:7"  # the prefill node writes there
    assert layout.for_dp_rank(0).session_id == "127.0.0.1:1"  # empty: the layout's own session
    assert layout.sessions == ("127.0.0.1:1", "127.0.0.1:7")
    assert layout_from_proto(layout_to_proto(layout)) == layout
    follower = MemoryRegion("kv", 3 << 30, 512, 12, "float32", attn_tp_rank=1, session_id="127.0.0.1:8")
    assert layout_from_proto(layout_to_proto(_layout(KV0, follower))).region("kv", 0, 1) == follower
    swa = MemoryRegion("swa", 4 << 30, 64, 12, "float32", dp_rank=1, session_id="127.0.0.1:9")
    with pytest.raises(ValueError, match="different transfer sessions"):
        _layout(KV0, MemoryRegion("swa", 1 << 20, 64, 10, "float32"), rank1, swa)
