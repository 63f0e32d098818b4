"""Decode attention's one-launch split merge under the Triton interpreter: against the two-launch merge and
the torch twin, and the arrival counters left at zero (kernels and the engine's triton backend).

The interpreter runs programs one after another, so these tests check the merge arithmetic, which program
merges, and the counter reset; the memory ordering between concurrent programs is a GPU matter
(test_attention_gpu.py).
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels._attention_fixtures import interpreted
from tests.kernels._merge_cases import engine_merge_case, merge_case, sm90_ptx
from tests.kernels._ptx import needs_nvidia_compiler

pytest.importorskip("triton", reason="triton is not installed")

TOL = {torch.float32: 1e-5, torch.float16: 4e-3}
# ragged rows: single-key and empty rows, rows shorter than splits x block_n (their last splits are empty)
LENGTHS = [1, 19, 40, 0, 7, 33]


# pairwise: every two of (q-head grouping, window, dtype) meet in some case
CASES = [(3, 2, 0, torch.float32), (3, 2, 6, torch.float16), (5, 1, 0, torch.float16), (5, 1, 6, torch.float32),
         (4, 2, 0, torch.float32), (4, 2, 6, torch.float16)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("group,kv_heads,window,dtype", CASES)
def test_one_launch_equals_two_launches_and_twin(group, kv_heads, window, dtype):
    res = interpreted(merge_case, dtype, group, window, LENGTHS, splits=(2, 3, 7), kv_heads=kv_heads,
                      seed=group * 10 + window)
    assert max(res["one"]) < TOL[dtype] and max(res["two"]) < TOL[dtype], res
    assert max(res["one_vs_two"]) < 1e-6, res
    assert all(res["repeat"]) and all(res["counters_zero"]), res


@pytest.mark.timeout(300)
def test_counters_reset_so_a_second_call_repeats_the_first():
    """SmolLM2's grouping (3 q heads per kv head), up to 32 splits over 16-key blocks: most splits empty.
    Counters left non-zero would make the second call's last program miss its turn (NaN output)."""
    res = interpreted(merge_case, torch.float32, 3, 0, [1, 64, 300], splits=(2, 32), kv_heads=3, head_dim=64)
    assert res["repeat"] == [True, True], res
    assert res["counters_zero"] == [True] * 4, res
    assert max(res["one"]) < TOL[torch.float32], res


def test_one_launch_needs_counters():
    from pdpair.kernels.attention import decode_attention, decode_workspace

    q = torch.randn(2, 4, 16)
    cache = torch.randn(4, 4, 2, 16)
    ptr, idx = torch.tensor([0, 3, 5], dtype=torch.int32), torch.arange(5, dtype=torch.int32)
    ws = decode_workspace(2, 4, 16, 2, "cpu")  # no num_kv_heads: no counters
    assert ws.counters is None
    with pytest.raises(AssertionError, match="num_kv_heads"):
        decode_attention(q, cache, cache, ptr, idx, num_splits=2, workspace=ws, fused_merge=True)


@pytest.mark.timeout(300)
def test_engine_backend_one_launch_and_graph_workspace(tmp_path):
    pytest.importorskip("transformers", reason="transformers writes the seeded test model")
    res = interpreted(engine_merge_case, str(tmp_path))
    assert res["splits"] == [8, 4, 8], res  # 16 "SMs", 2 kv heads: several splits at both buckets
    assert res["counters_shape"] == (8 * 2,), res
    assert res["one_vs_two"] < 1e-5, res
    assert max(res["body_errs"]) < 1e-5, res
    assert res["counters_zero"] == [True] * 3, res


@pytest.mark.timeout(300)
def test_one_launch_lowers_to_one_acq_rel_arrival_per_program():
    """Compiled for sm_90 without a GPU: one gpu-scope acq_rel atomic add, issued by a single predicated
    thread and broadcast through shared memory; the merge reads the workspace through L2 (`.cg`); the
    two-launch form has neither."""
    import re

    needs_nvidia_compiler()
    ptx = sm90_ptx(9, 3, 64, 32, fused=True)
    atoms = re.findall(r"^\s*(@%p\d+ )?atom\.global\.gpu\.acq_rel\.add\.u32 ", ptx, re.M)
    assert len(atoms) == 1 and atoms[0], atoms  # predicated: one thread of the program
    assert "ld.global.cg" in ptx
    plain = sm90_ptx(9, 3, 64, 32, fused=False)
    assert "atom." not in plain and "ld.global.cg" not in plain
