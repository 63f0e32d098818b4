"""What one router process holds: config, nodes, metrics, and the model's tokenizer once known."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from pdpair.router.config import RouterConfig
from pdpair.router.errors import ApiError
from pdpair.router.metrics import RouterMetrics
from pdpair.router.pool import NodePool
from pdpair.router.tokenizer import ModelCard, RouterTokenizer, model_card

logger = logging.getLogger(__name__)


class RouterState:
    def __init__(self, config: RouterConfig):
        self.config = config
        self.metrics = RouterMetrics()
        self.pool = NodePool(
            config.decode,
            config.prefill,
            policy=config.policy,
            cache_aware=config.cache_aware,
            observe_choice=self.metrics.observe_choice,
            poll_interval_s=config.poll_interval_s,
            rpc_timeout_s=config.rpc_timeout_s,
            dns_refresh_s=config.dns_refresh_s,
            tls=config.tls,
        )
        # tokenizing and rendering chat templates (a multi-MB prompt takes seconds) stay off the event loop
        self.cpu_pool = ThreadPoolExecutor(config.tokenize_threads, thread_name_prefix="pdpair-tokenize")
        self.tokenizer: RouterTokenizer | None = None
        self.card: ModelCard | None = None
        self._model_task: asyncio.Task | None = None
        self.fatal: BaseException | None = None  # the startup task's failure: the process must exit non-zero
        self.on_fatal: Callable[[], None] | None = None  # set by the server: stop serving

    def require_model(self) -> tuple[RouterTokenizer, ModelCard]:
        if self.tokenizer is None or self.card is None:
            raise ApiError(503, "the router is starting: no node has answered ModelInfo yet", code="not_ready")
        return self.tokenizer, self.card

    def ready(self) -> bool:
        return self.card is not None and self.pool.has_healthy_pair()

    async def _load_model(self) -> None:
        info = await self.pool.fetch_model_info()
        tokenizer = await asyncio.to_thread(RouterTokenizer.from_model_info, info)
        self.tokenizer, self.card = tokenizer, model_card(info)

    async def start(self) -> None:
        self.pool.start()
        self._model_task = asyncio.get_running_loop().create_task(self._load_model(), name="pdpair-model-info")
        self._model_task.add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task) -> None:
        """A failed startup task (e.g. a chat template that does not compile) stops the router."""
        if task.cancelled() or task.exception() is None:
            return
        self.fatal = task.exception()
        logger.error("router startup failed, exiting: %s: %s", type(self.fatal).__name__, self.fatal,
                     exc_info=self.fatal)
        if self.on_fatal is not None:
            self.on_fatal()

    async def stop(self) -> None:
        if self._model_task is not None and not self._model_task.done():
            self._model_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._model_task
        await self.pool.close()
        self.cpu_pool.shutdown(wait=False, cancel_futures=True)


STATE = web.AppKey("pdpair_router_state", RouterState)
