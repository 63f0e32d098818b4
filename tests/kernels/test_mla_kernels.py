"""MLA decode, DSA indexer top-k and sparse MLA kernels under the Triton interpreter, against their torch
twins and a float64 dense reference: shuffled pages (16 and 3 tokens), a -1 slot, padding rows, rows shorter
than top-k, splits that leave some programs empty."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._attention_fixtures import interpreted
from tests.kernels._mla_cases import decode_case, indexer_case, row_topk_case, sparse_case

pytest.importorskip("triton", reason="triton is not installed")

TOL = {torch.float32: 1e-5, torch.float16: 4e-3}
# both page sizes and both dtypes, paired (test_mla_head_blocks adds float16 on 16-token pages)
DTYPE_PAGES = [(torch.float32, 16), (torch.float16, 3)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype,page_size", DTYPE_PAGES)
def test_mla_decode(dtype, page_size):
    res = interpreted(decode_case, dtype, page_size, [37, 1, 20], splits=(1, 3, None), seed=page_size)
    assert res["twin_vs_dense"] < TOL[dtype], res
    assert max(res["kernel_vs_twin"]) < TOL[dtype] and max(res["kernel_vs_dense"]) < TOL[dtype], res
    assert all(res["empty_row_zero"]), res


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype,page_size", DTYPE_PAGES)
def test_sparse_mla(dtype, page_size):
    # top-k 24 over rows of 50 and 9 tokens: long rows really select, the short one selects all it sees
    res = interpreted(sparse_case, dtype, page_size, [50, 9, 30], 24, splits=(1, 2, None), seed=page_size)
    assert res["twin_vs_dense"] < TOL[dtype], res
    assert max(res["kernel_vs_twin"]) < TOL[dtype] and max(res["kernel_vs_dense"]) < TOL[dtype], res
    assert res["sparse_vs_decode"] < TOL[dtype], res
    assert all(res["nothing_selected_zero"]), res


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block_h", [32, 64])
def test_mla_head_blocks(block_h):
    # one head block wider than the 20 heads (masked rows), the launch shapes the benchmark also tries
    dec = interpreted(decode_case, torch.float16, 16, [37, 1, 20], splits=(1, 3), block_h=block_h, seed=5)
    sp = interpreted(sparse_case, torch.float16, 16, [50, 9, 30], 24, splits=(1, 2), block_h=block_h, seed=6)
    for res in (dec, sp):
        assert max(res["kernel_vs_twin"]) < TOL[torch.float16] and max(res["kernel_vs_dense"]) < TOL[torch.float16]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("page_size", [16, 3])
def test_indexer_topk(dtype, page_size):
    res = interpreted(indexer_case, dtype, page_size, [70, 5, 33], 12, seed=page_size)
    assert res["inf_pattern_equal"] and res["unfilled_equal_where_visible"], res
    assert res["scores_vs_twin"] < TOL[dtype], res
    assert res["kernel_topk_ok"] and res["triton_topk_ok"] and res["twin_topk_ok"], res


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", [64, 1024])
def test_row_topk(block):
    # radix select: ties at the k-th value, -inf tails, +-0.0, tiny negatives, per-row lengths, rows shorter than k
    res = interpreted(row_topk_case, 8, 300, 40, block=block, seed=block)
    assert all(res["ok"]) and all(res["twin_ok"]), res
