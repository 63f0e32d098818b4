"""The router's startup task is supervised: a failure is recorded and stops the server (exit non-zero)."""

from __future__ import annotations

import asyncio

from pdpair.router.config import RouterConfig
from pdpair.router.state import RouterState


def _run(fetch):
    async def body():
        state = RouterState(RouterConfig(decode=("127.0.0.1:1",), poll_interval_s=30))
        state.pool.fetch_model_info = fetch
        stopped = asyncio.Event()
        state.on_fatal = stopped.set
        await state.start()
        try:
            await asyncio.wait_for(stopped.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
        await state.stop()
        return stopped.is_set(), state.fatal

    return asyncio.run(body())


def test_failed_startup_task_stops_the_router():
    async def broken():
        raise RuntimeError("template does not compile")

    stopped, fatal = _run(broken)
    assert stopped and isinstance(fatal, RuntimeError) and "compile" in str(fatal)


def test_a_startup_still_waiting_is_not_fatal():
    async def waiting():
        await asyncio.sleep(60)

    stopped, fatal = _run(waiting)
    assert not stopped and fatal is None  # cancelled at stop(): not a failure
