"""Memory layouts: compatibility checks name the first differing field; wire round trip."""

from __future__ import annotations

import msgspec
import pytest
from pdpair.transfer import LayoutMismatch, MemoryLayout, MemoryRegion, check_compatible


def layout(**over) -> MemoryLayout:
    regions = over.pop("regions", None) or (
        MemoryRegion("kv", 0x10000, 98304, 100, "bfloat16"),
        MemoryRegion("mamba_ssm", 0x900000, 4096, 8, "float32"),
    )
    base = dict(
        node_id="n", session_id="127.0.0.1:15000", protocol="tcp", page_size=16, model_fingerprint="abc"
    )
    return MemoryLayout(**{**base, **over}, regions=regions)


def test_compatible_despite_different_pool_sizes_and_addresses():
    other = layout(
        node_id="m",
        session_id="127.0.0.1:15002",
        regions=(
            MemoryRegion("mamba_ssm", 0x5000, 4096, 2, "float32"),
            MemoryRegion("kv", 0x7770000, 98304, 7, "bfloat16"),
        ),
    )
    check_compatible(layout(), other)


@pytest.mark.parametrize(
    "remote,field",
    [
        (layout(page_size=32), "page_size"),
        (layout(model_fingerprint="xyz"), "model_fingerprint"),
        (layout(protocol="rdma"), "protocol"),
        (layout(regions=(MemoryRegion("kv", 0x10000, 98304, 100, "bfloat16"),)), "regions"),
        (
            layout(
                regions=(
                    MemoryRegion("kv", 0x10000, 49152, 100, "bfloat16"),
                    MemoryRegion("mamba_ssm", 0x900000, 4096, 8, "float32"),
                )
            ),
            "regions[kv].item_bytes",
        ),
        (
            layout(
                regions=(
                    MemoryRegion("kv", 0x10000, 98304, 100, "float16"),
                    MemoryRegion("mamba_ssm", 0x900000, 4096, 8, "float32"),
                )
            ),
            "regions[kv].dtype",
        ),
        # several fields differ: the first in check order is named
        (layout(page_size=1, protocol="rdma", model_fingerprint="q"), "page_size"),
    ],
)
def test_mismatch_names_first_field(remote, field):
    with pytest.raises(LayoutMismatch) as info:
        check_compatible(layout(), remote)
    assert info.value.field == field
    assert field in str(info.value)
    assert info.value.local != info.value.remote


def test_region_lookup_and_validation():
    lay = layout()
    assert lay.region("kv").num_items == 100 and lay.kinds == ("kv", "mamba_ssm")
    assert lay.region("kv").nbytes == 98304 * 100
    with pytest.raises(KeyError, match="no region 'swa'"):
        lay.region("swa")
    with pytest.raises(ValueError, match="twice"):
        layout(regions=(MemoryRegion("kv", 0, 1, 1, "f"), MemoryRegion("kv", 8, 1, 1, "f")))
    with pytest.raises(ValueError, match="item_bytes=0"):
        MemoryRegion("kv", 0, 0, 1, "f")


def test_msgpack_round_trip():
    lay = layout()
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(lay), type=MemoryLayout)
    assert back == lay and isinstance(back.regions, tuple)


def test_sliding_window_regions_must_agree_on_window_and_layers():
    from pdpair.transfer import LayoutMismatch, MemoryLayout, MemoryRegion, check_compatible

    def layout(window=64, layers=(0, 2)):
        return MemoryLayout("n", "h:1", "tcp", 16, "fp", (
            MemoryRegion("kv", 0, 4096, 10, "float32", layers=(1,)),
            MemoryRegion("swa", 1 << 20, 8192, 10, "float32", window=window, layers=layers)))

    check_compatible(layout(), layout())
    for kw, field in ((dict(window=65), "regions[swa].window"), (dict(layers=(0, 3)), "regions[swa].layers")):
        with pytest.raises(LayoutMismatch) as err:
            check_compatible(layout(), layout(**kw))
        assert err.value.field == field
