"""`Engine`: a loaded model, its pools, attention backend, runner and scheduler, plus offline `generate`."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import torch
from pdpair.engine.attention import create_backend
from pdpair.engine.cache import PrefixCache, cache_unsupported
from pdpair.engine.config import (
    DEFAULT_MEM_FRACTION,
    DumpConfig,
    EngineConfig,
    dtype_name,
    resolve_backend,
    resolve_max_pages,
)
from pdpair.engine.events import GenerateOutput, StepEvent
from pdpair.engine.memory import SWA_KIND, KVPool, PoolSet, ReqToTokenPool
from pdpair.engine.memory.mamba_pool import MambaPool
from pdpair.engine.request import Request
from pdpair.engine.runner import ModelRunner
from pdpair.engine.sampling import SamplingParams
from pdpair.engine.scheduler import Scheduler
from pdpair.engine.scheduler.resources import ResourceManager
from pdpair.engine.scheduler.stop import StopChecker
from pdpair.engine.scheduler.validate import RequestValidator

logger = logging.getLogger(__name__)


class Engine:
    """Owned by one thread. Build with `Engine.from_model(...)`."""

    def __init__(self, loaded, config: EngineConfig) -> None:
        mc = loaded.config
        self.config = config
        self.model_config = mc
        self.model_id = loaded.model_id
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.fingerprint = (f"{mc.arch}/L{mc.num_layers}/kvh{mc.num_kv_heads}/d{mc.head_dim}/"
                            f"{config.dtype}/p{config.page_size}/{loaded.weights_digest}")
        pools, companions, backend = self._pools_and_backend(mc, config)
        kv = pools[0]
        self.mamba_pool = None
        if mc.hybrid is not None:  # one recurrent-state slot per resident request, allocated at admission
            self.mamba_pool = MambaPool(config.max_running_requests, config.max_running_requests, mc.hybrid,
                                        config.torch_dtype, config.device)
            self.model.bind_state(self.mamba_pool)
        self.pools = PoolSet(pools, config.page_size, [self.mamba_pool] if self.mamba_pool is not None else [],
                             companions)
        self.req_to_token = ReqToTokenPool(config.max_running_requests, mc.context_length, config.page_size,
                                           config.device, self.pools.paged_kinds)
        if config.fused_ops and config.dump is None and config.device.startswith("cuda") and mc.mla is None \
                and config.attention_backend == "triton":
            from pdpair.engine.models.fused import fused_supported

            backend.fused_ops = fused_supported(mc)
        if hasattr(backend, "extend_sdpa"):
            backend.extend_sdpa = backend.extend_sdpa and config.extend_sdpa
        windows = {p.kind: p.window for p in pools if p.window is not None}
        self.runner = ModelRunner(self.model, backend, self.req_to_token, mc.vocab_size, windows)
        if config.dump is not None:
            from pdpair.engine.debug import Dumper

            self.runner.dumper = Dumper.start(config.dump, self.model, kv if mc.mla is None else None,
                                              loaded.model_id)
            if mc.mla is not None:
                self.runner.dumper.sources.append(backend.dump_pools)
        elif config.device.startswith("cuda") and not config.disable_cuda_graph and backend.supports_cuda_graph:
            from pdpair.engine.cuda_graph import DecodeCudaGraphs

            rows = self.mamba_pool.row_slots if self.mamba_pool is not None else None
            self.runner.graphs = DecodeCudaGraphs.for_runner(self.runner, self.req_to_token,
                                                             config.max_running_requests, state_rows=rows)
        eos, decode = set(mc.eos_token_ids), None
        if self.tokenizer is not None:  # tiny test models come without one
            eos |= set(self.tokenizer.eos_token_ids)
            decode = self.tokenizer.decode
        self.prefix_cache = self._build_cache(config)
        self.scheduler = Scheduler(
            self.runner, ResourceManager(self.pools, self.req_to_token, self.prefix_cache),
            RequestValidator(mc.vocab_size, mc.context_length, config.page_size, config.max_pages),
            StopChecker(sorted(eos), mc.context_length, decode),
            config.chunk_size, config.max_running_requests, config.seed, overlap=config.overlap_schedule)
        self.scheduler.device = config.device
        self._ids = itertools.count()
        logger.info("engine %s: pools %s of %d pages of %d tokens (%.1f MiB), backend %s, %s on %s, prefix cache %s",
                    self.model_id, {p.kind: len(p.layer_ids) for p in [*pools, *companions]}, config.max_pages,
                    config.page_size, sum(p.buffer.nbytes for p in [*pools, *companions]) / 2**20,
                    config.attention_backend, config.dtype, config.device,
                    "on" if self.prefix_cache is not None else "off")

    def _build_cache(self, config: EngineConfig) -> PrefixCache | None:
        if not config.prefix_cache:
            return None
        why = cache_unsupported(self.pools)
        if why is not None:
            logger.info("prefix cache off for %s: %s", self.model_id, why)
            return None
        return PrefixCache(self.pools)

    def check_integrity(self, held: dict[str, list] | None = None) -> None:
        """Every item free, or in use by exactly one holder: a resident request, the prefix cache or `held`
        (quarantine). AssertionError with the numbers otherwise."""
        self.pools.check_integrity()
        self.scheduler.check_integrity(held)

    @classmethod
    def _pools_and_backend(cls, mc, config: EngineConfig) -> tuple[list, list, object]:
        """(paged pools, companion pools, attention backend). Latent attention: the `kv` pool of latent vectors,
        its `dsa` companion of indexer keys and the MLA backend; otherwise `_build_pools` and `create_backend`."""
        if mc.mla is not None:
            from pdpair.engine.attention.mla_backend import MLABackend
            from pdpair.engine.memory.latent_pool import mla_pools

            kv, dsa = mla_pools(mc, config)
            ops = None
            if config.device.startswith("cuda") and config.attention_backend == "triton":
                from pdpair.engine.attention.mla_ops import TritonMLAOps

                ops = TritonMLAOps()
            return [kv], [dsa], MLABackend(kv, dsa, mc.num_heads, mc.mla.index_topk, ops=ops)
        pools, layer_pools = cls._build_pools(mc, config)
        backend = create_backend(config.attention_backend, pools[0], mc.num_heads, mc.num_kv_heads, mc.head_dim,
                                 config.device, mc.attn_scale, layer_pools, mc.attn_logit_softcapping)
        return pools, [], backend

    @staticmethod
    def _build_pools(mc, config: EngineConfig) -> tuple[list[KVPool], list[tuple[KVPool, int]]]:
        """The full-attention pool (first) and, for sliding-window layers, the `swa` pool; each model layer's
        (pool, index in the pool)."""
        shape = (config.page_size, mc.num_kv_heads, mc.head_dim, config.torch_dtype, config.device)
        pools = [KVPool(config.max_pages, len(mc.full_layers), *shape, layer_ids=mc.full_layers)]
        if mc.swa_layers:
            pools.append(KVPool(config.max_pages, len(mc.swa_layers), *shape, kind=SWA_KIND,
                                window=mc.sliding_window, layer_ids=mc.swa_layers))
        layer_pools: list[tuple[KVPool, int]] = [None] * mc.num_layers  # type: ignore[list-item]
        for pool in pools:
            for i, layer in enumerate(pool.layer_ids):
                layer_pools[layer] = (pool, i)
        return pools, layer_pools

    @classmethod
    def from_model(cls, model: str | None = "smollm2-135m", device: str = "cpu",
                   dtype: str | torch.dtype | None = None, page_size: int = 16, max_pages: int | None = None,
                   chunk_size: int = 512, attention_backend: str = "auto", max_running_requests: int = 256,
                   seed: int = 0, mem_fraction: float = DEFAULT_MEM_FRACTION,
                   disable_cuda_graph: bool = False, dump: DumpConfig | None = None, fused_ops: bool = True,
                   extend_sdpa: bool = True, prefix_cache: bool = False,
                   overlap_schedule: bool | None = None) -> Engine:
        """Load a model (the embedded SmolLM2, a Hugging Face directory or a .gguf path) and build the runtime."""
        from pdpair.engine.loader import load_model

        loaded = load_model(model, device=device, dtype=dtype)
        return cls.from_loaded(loaded, device=device, page_size=page_size, max_pages=max_pages,
                               chunk_size=chunk_size, attention_backend=attention_backend,
                               max_running_requests=max_running_requests, seed=seed, mem_fraction=mem_fraction,
                               disable_cuda_graph=disable_cuda_graph, dump=dump, fused_ops=fused_ops,
                               extend_sdpa=extend_sdpa, prefix_cache=prefix_cache, overlap_schedule=overlap_schedule)

    @classmethod
    def from_loaded(cls, loaded, device: str = "cpu", page_size: int = 16, max_pages: int | None = None,
                    chunk_size: int = 512, attention_backend: str = "auto", max_running_requests: int = 256,
                    seed: int = 0, mem_fraction: float = DEFAULT_MEM_FRACTION,
                    disable_cuda_graph: bool = False, dump: DumpConfig | None = None, fused_ops: bool = True,
                    extend_sdpa: bool = True, prefix_cache: bool = False,
                    overlap_schedule: bool | None = None) -> Engine:
        """Build the runtime around an already loaded model (`LoadedModel`-like: config, model, tokenizer,
        model_id, weights_digest); the dtype is the model's. `dump` None: `PDPAIR_DUMP_DIR` decides.
        `overlap_schedule` None: on for CUDA, off elsewhere."""
        mc = loaded.config
        dtype = next(loaded.model.parameters()).dtype
        if max_pages is None:
            if mc.mla is not None:
                from pdpair.engine.memory.latent_pool import mla_page_bytes

                page_bytes = mla_page_bytes(mc, page_size, dtype)
            else:
                page_bytes = KVPool.page_bytes(len(mc.full_layers) + len(mc.swa_layers), page_size,
                                               mc.num_kv_heads, mc.head_dim, dtype)
            max_pages = resolve_max_pages(device, page_bytes, mem_fraction)
        config = EngineConfig(device=device, dtype=dtype_name(dtype), page_size=page_size,
                              max_pages=max_pages, chunk_size=chunk_size,
                              max_running_requests=max_running_requests,
                              attention_backend=resolve_backend(attention_backend, device), seed=seed,
                              disable_cuda_graph=disable_cuda_graph, fused_ops=fused_ops, extend_sdpa=extend_sdpa,
                              dump=dump if dump is not None else DumpConfig.from_env(), prefix_cache=prefix_cache,
                              overlap_schedule=device.startswith("cuda") if overlap_schedule is None
                              else overlap_schedule)
        return cls(loaded, config)

    def rank_stats(self) -> list:
        """[(DP rank, SchedulerStats)] of the node's other DP-attention ranks; none for one rank (a
        DP-attention node replaces this with its DPScheduler's)."""
        return []

    def generate(self, prompts: Sequence[Sequence[int]],
                 sampling: SamplingParams | Sequence[SamplingParams] | None = None) -> list[GenerateOutput]:
        """Run `prompts` to completion (drives the scheduler; use one or the other on an engine)."""
        if sampling is None:
            sampling = SamplingParams()
        params = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        if any(not isinstance(p, SamplingParams) for p in params):
            raise ValueError("sampling must be SamplingParams or a list of them")
        reqs = [Request(f"gen-{next(self._ids)}", list(ids), sp) for ids, sp in zip(prompts, params, strict=True)]
        for req in reqs:  # check everything before queueing anything
            self.scheduler.validator.check(req)
            req.sampling.check_vocab(self.runner.vocab_size)
        for req in reqs:
            self.scheduler.submit(req)
        index = {r.rid: i for i, r in enumerate(reqs)}
        tokens: list[list[int]] = [[] for _ in reqs]
        reasons: list[str | None] = [None] * len(reqs)
        remaining = len(reqs)
        while remaining:
            for ev in self.scheduler.step():
                i = index.get(ev.rid)
                if i is None or not isinstance(ev, StepEvent):
                    continue
                tokens[i].extend(ev.new_token_ids)
                if ev.finish_reason is not None:
                    reasons[i] = ev.finish_reason
                    remaining -= 1
        self.scheduler.drain()  # overlap: free what requests that stopped in the last launched batch hold
        return [GenerateOutput(t, r) for t, r in zip(tokens, reasons, strict=True)]
