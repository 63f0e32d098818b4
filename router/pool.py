"""The router's nodes: health polling, pair selection, and the ModelInfo fetch at startup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import grpc
from pdpair.proto import pdpair_pb2 as pb
from pdpair.router.cache_aware import CacheAwareConfig, ChoiceObserver
from pdpair.router.discovery import DEFAULT_DNS_REFRESH_S, Discovery, Resolver, getaddrinfo_resolver
from pdpair.router.errors import ApiError
from pdpair.router.node_client import NodeClient
from pdpair.router.pairing import make_pair_policy

from pdpair.tls import TlsFiles

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    decode: NodeClient
    prefill: NodeClient | None  # None: the decode node prefills locally (colocated)


class NodePool:
    def __init__(
        self,
        decode: Sequence[str],
        prefill: Sequence[str] = (),
        *,
        policy: str = "round_robin",
        cache_aware: CacheAwareConfig | None = None,
        observe_choice: ChoiceObserver | None = None,
        poll_interval_s: float = 1.0,
        rpc_timeout_s: float = 2.0,
        dns_refresh_s: float = 0.0,
        tls: TlsFiles | None = None,
        resolver: Resolver = getaddrinfo_resolver,
    ):
        if not decode:
            raise ValueError("at least one decode node is needed")
        self._targets = {"decode": list(decode), "prefill": list(prefill)}
        # dns:/// targets, or every target when dns_refresh_s > 0, stand for all the addresses they resolve to
        self._discovery = {role: Discovery(role, targets, all_dynamic=dns_refresh_s > 0, resolver=resolver)
                           for role, targets in self._targets.items()}
        dynamic = any(d.dynamic for d in self._discovery.values())
        self.dns_refresh_s = (dns_refresh_s or DEFAULT_DNS_REFRESH_S) if dynamic else 0.0
        self._dns_at = float("-inf")
        self.tls = tls
        self.decode = [NodeClient(a, "decode", tls) for a in self._discovery["decode"].addresses()]
        self.prefill = [NodeClient(a, "prefill", tls) for a in self._discovery["prefill"].addresses()]
        self._retired: list[NodeClient] = []
        self._policy = make_pair_policy(policy, cache_aware, observe_choice)
        self.poll_interval_s = poll_interval_s
        self.rpc_timeout_s = rpc_timeout_s
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    @property
    def colocated(self) -> bool:
        return not self._targets["prefill"]

    @property
    def nodes(self) -> list[NodeClient]:
        return self.decode + self.prefill

    def has_healthy_pair(self) -> bool:
        return any(n.healthy for n in self.decode) and (self.colocated or any(n.healthy for n in self.prefill))

    def pick(self, avoid: Collection[NodeClient] = (), prompt: Sequence[int] = ()) -> Pair:
        """A (decode, prefill) pair of healthy nodes not in `avoid`, by policy (cache_aware looks at the prompt's
        token ids); ApiError(503) when none exists (the client sees no addresses; the log has them)."""
        decode, prefill = self._candidates(avoid)
        if not decode or (not self.colocated and not prefill):
            down = ", ".join(f"{n.role} {n.addr} ({n.last_error})" for n in self.nodes if not n.healthy)
            logger.warning("no healthy prefill/decode pair (avoiding %d): %s", len(avoid), down or "-")
            raise ApiError(503, "no healthy prefill/decode pair", code="no_healthy_pair")
        d, p = self._policy.pick_pair(decode, None if self.colocated else prefill, prompt)
        return Pair(decode=d, prefill=p)

    def _candidates(self, avoid: Collection[NodeClient]) -> tuple[list[NodeClient], list[NodeClient]]:
        return ([n for n in self.decode if n.healthy and n not in avoid],
                [n for n in self.prefill if n.healthy and n not in avoid])

    def can_avoid(self, node: NodeClient) -> bool:
        """Whether a healthy pair without `node` exists (the policies' state is left alone)."""
        decode, prefill = self._candidates((node,))
        return bool(decode) and (self.colocated or bool(prefill))

    def eject(self, node: NodeClient, reason: str) -> None:
        """Passive ejection: `node` gets no new work until a Stats poll finds it answering and not draining;
        the poll runs at once."""
        node.mark_unhealthy(reason)
        self._retain_healthy()
        self._wake.set()

    def _retain_healthy(self) -> None:
        """The policy forgets nodes that are unhealthy or gone (a node that comes back may have lost its cache)."""
        self._policy.retain([n for n in self.nodes if n.healthy])

    async def poll_once(self) -> None:
        if self.dns_refresh_s > 0 and time.monotonic() - self._dns_at >= self.dns_refresh_s:
            self._dns_at = time.monotonic()
            await self._refresh_dns()
        await asyncio.gather(*(n.poll(self.rpc_timeout_s) for n in self.nodes))
        self._retain_healthy()
        for node in [n for n in self._retired if n.inflight == 0]:
            self._retired.remove(node)
            await node.close()

    async def _refresh_dns(self) -> None:
        """Add a client per newly resolved address; retire clients whose address went away."""
        for role in ("decode", "prefill"):
            current: list[NodeClient] = getattr(self, role)
            addrs = await self._discovery[role].refresh()
            known = {n.addr: n for n in current}
            for gone in set(known) - set(addrs):
                logger.info("%s node %s left DNS", role, gone)
                self._retired.append(known[gone])
            for new in set(addrs) - set(known):
                logger.info("%s node %s found in DNS", role, new)
            setattr(self, role, [known.get(a) or NodeClient(a, role, self.tls) for a in addrs])

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # a poll must never kill the loop
                logger.exception("health poll failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            self._wake.clear()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll_loop(), name="pdpair-health-poll")

    async def fetch_model_info(self, retry_s: float = 1.0) -> pb.ModelInfoResponse:
        """ModelInfo from the first decode node that answers; retries until one does."""
        attempt = 0
        while True:
            for node in self.decode:
                try:
                    info = await node.model_info(self.rpc_timeout_s * 5)
                except grpc.aio.AioRpcError as exc:
                    if attempt % 10 == 0:
                        logger.info("waiting for ModelInfo from %s: %s", node.addr, exc.code().name)
                    continue
                logger.info("model %s (context %d) from %s", info.model_id, info.context_length, node.addr)
                return info
            attempt += 1
            await asyncio.sleep(retry_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.gather(*(n.close() for n in self.nodes + self._retired))
