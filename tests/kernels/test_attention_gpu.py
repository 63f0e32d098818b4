"""Attention kernels on a GPU at real sizes, bf16/fp16, against the torch twins run in float64."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._attention_cases import (
    decode_case,
    extend_case,
    kv_indices_case,
    store_kv_case,
    window_indices_case,
)
from tests.kernels._merge_cases import graph_replay_case, merge_case

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# bf16 operands land between 1e-3 and 1e-2 relative to a float64 reference; fp16 has 3 more mantissa bits
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("group,kv_heads", [(1, 8), (4, 8), (3, 3)])
@pytest.mark.parametrize("window", [0, 1000])
def test_decode_gpu(dtype, page_size, group, kv_heads, window):
    head_dim = 64 if kv_heads == 3 else 128  # the embedded model's shape and a 32q/8kv d128 shape
    lengths = [4096, 1, 17, 2500, 777, 3000, 64, 1025]
    errs = decode_case(dtype, page_size, group, window, lengths, splits=(None, 1, 7, 32), kv_heads=kv_heads,
                       head_dim=head_dim, block_n=64, seed=page_size + group + window, device="cuda",
                       ref64=True, pad_rows=3)
    assert max(errs) < TOL[dtype], errs


# SmolLM2 (9 q / 3 kv heads, d 64) and Llama-3.1-8B (32 / 8, d 128) attention shapes
MERGE_SHAPES = [(9, 3, 64), (32, 8, 128)]


@pytest.mark.parametrize("heads,kv_heads,head_dim", MERGE_SHAPES)
@pytest.mark.parametrize("bsz", [1, 8, 64])
@pytest.mark.parametrize("window", [0, 1000])
def test_decode_one_launch_merge_gpu(heads, kv_heads, head_dim, bsz, window):
    """The one-launch merge with concurrent programs: against the two-launch merge and the float64 twin at
    the default split count and at 7 and 32; a second call on the same workspace repeats the first bit for
    bit and the counters are zero after every call."""
    from pdpair.kernels.attention import default_num_splits

    lengths = [2048] * bsz
    if bsz > 1:
        lengths[1], lengths[-1] = 777, 1  # short rows: empty splits
    splits = sorted({default_num_splits(bsz, kv_heads), 7, 32})
    res = merge_case(torch.bfloat16, heads // kv_heads, window, lengths, splits=splits, kv_heads=kv_heads,
                     head_dim=head_dim, page_size=16, block_n=64, seed=bsz + window, device="cuda", ref64=True)
    tol = TOL[torch.bfloat16]
    assert max(res["one"]) < tol and max(res["two"]) < tol, res
    assert max(res["one_vs_two"]) < 1e-3, res  # fp32 summation order, then bf16 rounding
    assert all(res["repeat"]) and all(res["counters_zero"]), res


@pytest.mark.parametrize("heads,kv_heads,head_dim", MERGE_SHAPES)
@pytest.mark.parametrize("bsz", [1, 8, 64])
def test_decode_one_launch_merge_cuda_graph(heads, kv_heads, head_dim, bsz):
    """Captured once, replayed 3 times with new queries and lengths: each replay equals an eager call and the
    twin, and leaves the counters at zero (the next replay needs them there)."""
    res = graph_replay_case(heads, kv_heads, head_dim, bsz, ctx=2048, replays=3)
    assert res["counters_zero"] == [True] * 3, res
    assert max(res["vs_eager"]) < 1e-6, res
    assert max(res["vs_twin"]) < TOL[torch.bfloat16], res


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("group,kv_heads", [(1, 8), (4, 8), (3, 3)])
@pytest.mark.parametrize("window", [0, 700])
def test_extend_gpu(dtype, page_size, group, kv_heads, window):
    head_dim = 64 if kv_heads == 3 else 128
    prefixes = [0, 1500, 33, 4000, 0]
    extends = [2048, 1, 700, 513, 0]
    err = extend_case(dtype, page_size, group, window, prefixes, extends, kv_heads=kv_heads, head_dim=head_dim,
                      block_m=None, seed=page_size + group + window, device="cuda", ref64=True, strided_q=True)
    assert err < TOL[dtype], err


@pytest.mark.parametrize("with_start", [False, True])
def test_kv_indices_gpu(with_start):
    assert all(kv_indices_case(with_start, device="cuda", block=512))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("page_size", [1, 16])
def test_store_kv_gpu(dtype, page_size):
    assert store_kv_case(dtype, page_size, device="cuda")


@pytest.mark.parametrize("use_tma", [False, True])
def test_extend_gpu_first_chunks(use_tma):
    err = extend_case(torch.bfloat16, 16, 4, 0, [0, 0, 0], [4096, 1, 1000], kv_heads=8, head_dim=128,
                      block_m=None, device="cuda", ref64=True, use_tma=use_tma, has_prefix=False)
    assert err < TOL[torch.bfloat16], err


def test_window_start_offsets_gpu():
    assert window_indices_case(6, device="cuda") < 1e-5
