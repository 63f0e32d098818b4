"""The Triton attention backend (CUDA): paged extend and split-KV decode kernels, CUDA-graph ready decode."""

from __future__ import annotations

import torch
from pdpair.engine.attention.base import AttentionBackend
from pdpair.engine.attention.sdpa_extend import sdpa_extend, sdpa_fits
from pdpair.engine.batch import ForwardBatch
from pdpair.engine.memory.kv_pool import KVPool
from pdpair.kernels import HAS_TRITON
from pdpair.kernels.attention import (
    DecodeWorkspace,
    decode_attention,
    decode_workspace,
    default_num_splits,
    extend_attention,
    store_kv,
)
from pdpair.kernels.fused.skinny_qkv import QKNormWorkspace, QKScale, qk_norm_workspace

if not HAS_TRITON:
    raise ImportError("triton is not installed (pip install 'pdpair[triton]')")


# Decode graphs on an H200 (docs/kernels.md, "One-launch split merge"): with 128-wide heads (Llama-3.1-8B,
# Qwen3-8B shapes) the one-launch merge saved 8-74 us at batch 1, 110-157 us at batch 8, 55-92 us at batch
# 16-64; with 64-wide heads (SmolLM2 and Llama-3.2-1B shapes) it drew level at batch 1 and lost 36-59 us at
# batch 8, where a program streams half the bytes for the same arrival round trip.
FUSED_MERGE_MIN_HEAD_DIM = 128


class TritonBackend(AttentionBackend):
    """Reads `kv_indptr`/`kv_indices` straight from the batch; decode splits depend on the batch size only.

    Eager decode allocates its split workspace once per forward; under CUDA graphs the workspace and every metadata
    tensor are static buffers (`init_graph_state`), bound per captured batch size. Decode merges its splits in a
    second launch, or with `fused_merge` inside the split launch (the default for heads of at least
    `FUSED_MERGE_MIN_HEAD_DIM`): the workspace's arrival counters start at zero and every launch leaves them at
    zero, so one workspace serves every layer and every graph replay.
    """

    def __init__(self, kv_pool: KVPool, num_heads: int, num_kv_heads: int, head_dim: int,
                 scale: float | None = None, layer_pools=None, softcap: float | None = None) -> None:
        assert softcap is None, "the triton kernels do not cap attention logits"
        super().__init__(kv_pool, num_heads, num_kv_heads, head_dim, scale, layer_pools)
        device = self._device = kv_pool.buffer.device
        # on CPU (the Triton interpreter, in tests) one "SM": few splits keep the interpreted grid small
        self._num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        self._splits = 1
        self._workspace: DecodeWorkspace | None = None
        # a small decode batch's qkv projection, rope and K/V store run as one launch
        # (kernels/fused/skinny_qkv.py; only where the fused forward's skinny path runs: CUDA, bf16/fp16)
        self.fused_qkv = True
        # merge the splits inside the split launch (one arrival atomic per program) instead of a second launch
        self.fused_merge = head_dim >= FUSED_MERGE_MIN_HEAD_DIM
        # a small decode batch of a small or wide model folds each residual add into the projection before it
        # and each RMSNorm into the projection after it (engine/models/fused.py: `_folded_layers`)
        self.fold_norms = True
        # with `fused_qkv`, a q/k-norm model's qkv launch leaves the norm's factors to decode attention instead
        # of meeting per head (kernels/fused/skinny_qkv.py: `QKScale`)
        self.defer_qk_norm = True
        # decode at batch 1 reads each split's first K/V block before the PDL wait (kernels/attention/decode.py)
        self.decode_preload = True
        # a folded batch-1 step of a wide model runs its o, gate/up and down projections with their weight in
        # flight across the launch edge (kernels/fused/tma_linear.py; Hopper with Gluon)
        self.tma_linear = True
        self._max_extend = 0
        self._has_prefix = True
        # extend batches without a cached prefix go through torch SDPA (cuDNN) on CUDA; see sdpa_extend.py
        self.extend_sdpa = device.type == "cuda"
        self._sdpa = False
        self._graph_mid_o: torch.Tensor | None = None  # flat static workspace for captured decode
        self._graph_mid_lse: torch.Tensor | None = None
        self._graph_counters: torch.Tensor | None = None  # int32 arrival counters, zero at rest
        self._graph_buffers_retired: list = []  # kept alive for graphs captured on them
        # where the fused qkv projection's q/k-norm programs meet: its counters are zero between launches, so one,
        # made on first use or with the graph state, serves every layer, eager forward and graph replay
        self._qk_ws: QKNormWorkspace | None = None

    def num_splits(self, batch_size: int) -> int:
        return default_num_splits(batch_size, self.num_kv_heads, self._num_sms)

    def qk_norm_workspace(self) -> QKNormWorkspace:
        """The fused qkv projection's q/k-norm workspace (`skinny_qkv.py`), for this backend's heads."""
        if self._qk_ws is None:
            self._qk_ws = qk_norm_workspace(self.num_heads, self.num_kv_heads, self.head_dim, self._device)
        return self._qk_ws

    def prepare(self, batch: ForwardBatch) -> None:
        if batch.is_decode:
            self._splits = self.num_splits(batch.batch_size)
            # one workspace for every layer of this forward (the layers run in order on one stream); arrival
            # counters (a zeroing launch) only for the one-launch merge
            self._workspace = decode_workspace(batch.batch_size, self.num_heads, self.head_dim, self._splits,
                                               batch.input_ids.device,
                                               self.num_kv_heads if self.fused_merge else None)
        else:
            self._max_extend = int(batch.extend_lens_cpu.max()) if batch.batch_size else 0
            self._has_prefix = bool((batch.seq_lens_cpu > batch.extend_lens_cpu).any())
            # SDPA has no window mask: a model with sliding-window pools keeps its prefill on the extend kernel
            self._sdpa = (self.extend_sdpa and not batch.windows and not self._has_prefix
                          and sdpa_fits(batch.extend_lens_cpu))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int,
                batch: ForwardBatch, kv_stored: bool = False, qk_norm: QKScale | None = None) -> torch.Tensor:
        """`kv_stored`: k/v are already in the cache (the fused prologue wrote them); skip the store. `qk_norm`
        (decode, with `kv_stored`): the q/k RMSNorm that prologue deferred to attention (`decode_attention`)."""
        assert qk_norm is None or (kv_stored and batch.is_decode), "a deferred q/k norm is a fused decode's"
        pool, idx = self.layer_pools[layer]
        k_cache, v_cache = pool.k_layers[idx], pool.v_layers[idx]
        # a sliding-window pool's layers read its own, window-clipped metadata: decode reads O(window) keys
        meta = batch if pool.window is None else batch.windows[pool.kind]
        window = pool.window or 0
        if not kv_stored:
            store_kv(k, v, k_cache, v_cache, meta.out_cache_loc)
        o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if batch.is_decode:
            decode_attention(q, k_cache, v_cache, meta.kv_indptr, meta.kv_indices, o=o, sm_scale=self.scale,
                             num_splits=self._splits, workspace=self._workspace, window=window,
                             fused_merge=self.fused_merge, preload=None if self.decode_preload else False,
                             qk_norm=qk_norm)
        elif self._sdpa:
            sdpa_extend(q, k, v, batch.extend_lens_cpu, self.scale, o)
        else:
            extend_attention(q, k, v, k_cache, v_cache, batch.qo_indptr, batch.seq_lens, meta.kv_indptr,
                             meta.kv_indices, self._max_extend, o=o, sm_scale=self.scale,
                             has_prefix=self._has_prefix, window=window)
        return o

    # CUDA graphs (decode only): the batch handed in is the graph runner's static batch
    def init_graph_state(self, max_batch_size: int, max_context: int) -> None:
        """Static split workspace for graphs of up to `max_batch_size` rows; grow-only, so graphs captured
        earlier keep valid addresses. The arrival counters are zeroed once here; each launch resets its own."""
        n = max_batch_size * self.num_heads * self.num_splits(1)  # batch size 1 gets the most splits
        if self._graph_mid_lse is not None and self._graph_mid_lse.numel() >= n:
            return
        device = self._device
        self._graph_buffers_retired.append((self._graph_mid_o, self._graph_mid_lse, self._graph_counters))
        self._graph_mid_o = torch.empty(n * self.head_dim, dtype=torch.float32, device=device)
        self._graph_mid_lse = torch.empty(n, dtype=torch.float32, device=device)
        self._graph_counters = torch.zeros(max_batch_size * self.num_kv_heads, dtype=torch.int32, device=device)
        self.qk_norm_workspace()  # made outside the capture (its rows: MAX_ROWS whatever the batch size)

    def prepare_for_capture(self, batch: ForwardBatch) -> None:
        self.prepare_for_replay(batch, batch.batch_size)

    def prepare_for_replay(self, batch: ForwardBatch, padded_batch_size: int) -> None:
        assert self._graph_mid_o is not None, "init_graph_state() first"
        assert batch.is_decode, "CUDA graphs capture decode batches only"
        bs, h, d = padded_batch_size, self.num_heads, self.head_dim
        self._splits = s = self.num_splits(bs)
        assert bs * h * s <= self._graph_mid_lse.numel(), (bs, h, s, self._graph_mid_lse.numel())
        self._workspace = DecodeWorkspace(self._graph_mid_o[: bs * h * s * d].view(bs, h, s, d),
                                          self._graph_mid_lse[: bs * h * s].view(bs, h, s),
                                          self._graph_counters[: bs * self.num_kv_heads].view(bs, self.num_kv_heads))
