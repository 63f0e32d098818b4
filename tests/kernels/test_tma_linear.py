"""The batch-1 TMA projections (kernels/fused/tma_linear.py) without a GPU: their launch shapes, when they
run, and what the kernel lowers to for sm_90 (the weight's copies before the PDL wait, nothing else)."""

from __future__ import annotations

import re

import pytest
import torch

from tests.kernels._ptx import needs_nvidia_compiler, sm90_gluon_ptx

ACCESS = re.compile(r"\b(ld|st|atom|red)\.global")
BULK = re.compile(r"\bcp\.async\.bulk\.tensor\.")


@pytest.mark.parametrize("n,k,gated", [(4096, 4096, False), (4096, 12288, False), (4096, 14336, False),
                                       (12288, 4096, True), (14336, 4096, True), (1024, 1024, False)])
def test_config_covers_every_column_once_within_the_sms(n, k, gated):
    from pdpair.kernels.fused.tma_linear import RING_KB, SMEM_BYTES, config

    c = config(n, k, gated, 132)
    assert c["programs"] <= 132 and c["programs"] * c["TILES"] * c["BLOCK_N"] == n
    assert k % c["BLOCK_K"] == 0 and c["BLOCK_K"] % 256 == 0
    step = (2 if gated else 1) * c["BLOCK_N"] * c["BLOCK_K"] * 2
    assert c["RING"] >= 2 and c["RING"] * step <= RING_KB << 10 and c["RING"] * step + 2 * k < SMEM_BYTES
    assert config(n + 8, k, gated, 132) is None and config(n, k + 128, gated, 132) is None
    few = config(n, k, gated, 7)  # fewer SMs: more tiles per program, never more programs than SMs
    assert few["programs"] <= 7 and few["programs"] * few["TILES"] * few["BLOCK_N"] == n


def test_config_keeps_the_input_vector_and_two_steps_in_shared_memory():
    from pdpair.kernels.fused.tma_linear import SMEM_BYTES, config

    wide = config(8192, 57344, False, 132)  # a 70B-wide down projection: the ring shrinks beside a 112 KB input
    assert wide is not None and 2 <= wide["RING"] < 5
    assert wide["RING"] * 32 * 512 * 2 + 2 * 57344 + 1024 <= SMEM_BYTES
    assert config(4096, 98304, False, 132) is None  # a 192 KB input leaves no room for two steps


def test_not_supported_off_hopper_or_beyond_one_row():
    from pdpair.kernels.fused.tma_linear import supported

    w = torch.zeros(4096, 4096, dtype=torch.bfloat16)
    assert not supported(torch.zeros(1, 4096, dtype=torch.bfloat16), w, None)  # a CPU tensor
    if torch.cuda.is_available():
        wc = w.cuda()
        assert not supported(torch.zeros(2, 4096, dtype=torch.bfloat16, device="cuda"), wc, None)
        assert not supported(torch.zeros(1, 4096, device="cuda"), wc.float(), None)  # fp32
        assert not supported(torch.zeros(1, 4096, dtype=torch.bfloat16, device="cuda"), wc, wc[0])  # a bias


@pytest.mark.timeout(300)
@pytest.mark.parametrize("gated,rms,norm,qkv", [(False, False, True, False), (True, True, False, False),
                                                (False, False, False, False), (True, True, False, True),
                                                (True, False, False, True)])
def test_only_weight_copies_before_the_wait(gated, rms, norm, qkv):
    """With `PDL` the kernel's only work before `griddepcontrol.wait` is the TMA copies of its first RING - 1
    weight steps (the weight is no kernel's output); the release follows the wait, and the input vector's
    copies, every load and every store come after both. Without `PDL`, neither instruction appears."""
    needs_nvidia_compiler()
    tl_mod = pytest.importorskip("pdpair.kernels.fused.tma_linear")
    if not tl_mod.HAS_GLUON:
        pytest.skip("needs Gluon (Triton >= 3.5)")
    n, k = (3072 if qkv else 12288, 4096) if gated else (4096, 4096)  # qkv: 48 heads of 128, in pairs
    cfg = tl_mod.config(n, k, gated, 132, qkv=qkv)
    w = torch.empty(2 * n if gated else n, k, dtype=torch.bfloat16)
    x, y, parts = torch.empty(1, k, dtype=torch.bfloat16), torch.empty(1, n, dtype=torch.bfloat16), torch.empty(1, 128)
    desc = tl_mod.TensorDescriptor.from_tensor
    cache = torch.empty(4, 16, 8, 128, dtype=torch.bfloat16)
    rope = (y, y, torch.empty(1, dtype=torch.int64), cache, cache, 16384, 1024, 128, 16384, 1024, 128, y, y, parts)
    args = dict(x_desc=desc(x.view(-1, 256), [1, 256], tl_mod._smem_layout()),
                w_desc=desc(w, [cfg["BLOCK_N"], 256], tl_mod._smem_layout()), y=y, parts_in=parts, n_parts_in=128,
                eps_in=1e-6, g_out=y, xg_out=y, parts_out=parts, rope=rope if qkv else (y,))
    consts = dict(N=n, K=k, TILES=cfg["TILES"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], RING=cfg["RING"],
                  GATED=gated and not qkv, RMS_PARTS=128 if rms else 0, ACCUMULATE=not gated, NORM_OUT=norm)
    if qkv:
        consts |= dict(HALF=64, HEADS=32, KV_HEADS=8, PAGE_SIZE=16, QK_DEFER=rms)
    on = sm90_gluon_ptx(tl_mod._tma_linear_kernel, args, consts | {"PDL": True}, num_warps=cfg["num_warps"])
    wait, release = on.find("griddepcontrol.wait"), on.find("griddepcontrol.launch_dependents")
    assert 0 <= wait < release
    before = on[:wait]
    boxes = cfg["BLOCK_K"] // 256 * (2 if gated else 1)
    assert len(BULK.findall(before)) == (cfg["RING"] - 1) * boxes, len(BULK.findall(before))
    assert ACCESS.search(before) is None, ACCESS.search(before).group(0)
    after = on[release:]
    assert len(BULK.findall(after)) >= k // 256  # the input vector, then the rest of the weight
    first = ACCESS.search(on)
    assert first is not None and first.start() > release
    off = sm90_gluon_ptx(tl_mod._tma_linear_kernel, args, consts | {"PDL": False}, num_warps=cfg["num_warps"])
    assert "griddepcontrol" not in off
