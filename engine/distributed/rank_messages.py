"""Messages between a node's engine thread (or launcher) and its DP leaders' loops: commands in, reports out."""

from __future__ import annotations

from dataclasses import dataclass

from pdpair.engine.events import SchedulerStats
from pdpair.engine.sampling import SamplingParams


# -- commands (node -> one DP leader) ---------------------------------------------------------------------
@dataclass(frozen=True)
class Submit:
    rid: str
    input_ids: tuple[int, ...]
    sampling: SamplingParams


@dataclass(frozen=True)
class Abort:
    rid: str
    hold: bool = False  # quarantine the request's pages instead of freeing them (a failed write may land)


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Wake:
    """Another DP leader has new work: stop waiting for commands and join the next step gather now (the
    leaders step together, so one that waits out its idle wait holds the others' gather)."""


@dataclass(frozen=True)
class Prealloc:
    """Reserve destination pages for a remote prefill; answered by `Preallocated` once the pools hold it."""

    rid: str
    input_ids: tuple[int, ...]
    sampling: SamplingParams


@dataclass(frozen=True)
class Activate:
    """The request's prompt pages landed: join the running batch with the first token."""

    rid: str
    first_token: int


# -- reports (DP leader -> node) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    dp_rank: int
    regions: tuple = ()  # MemoryRegions of its pools, served by its own transfer session (disaggregating nodes)
    rank: int = 0  # the rank that is ready (DP leaders, and every rank of a disaggregating node, report)


@dataclass(frozen=True)
class Preallocated:
    dp_rank: int
    rid: str
    items: dict | None  # kind -> destination item ids (int64), None with an error
    shared_pages: int = 0  # leading pages its prefix cache lent the request (registered as held)
    error: str | None = None  # the request was refused (ValueError text)


@dataclass(frozen=True)
class Events:
    dp_rank: int
    events: list  # StepEvent / ChunkEvent


@dataclass(frozen=True)
class RankStats:
    dp_rank: int
    stats: SchedulerStats
    quarantined: dict | None = None  # kind -> items held after failed transfers


@dataclass(frozen=True)
class Closed:
    dp_rank: int
    idle_forwards: int
    idle_seconds: float
    graph_replays: int = 0  # decode forwards replayed through graphs (idle ones included)
    iterations: int = 0  # collective iterations (scheduler steps, idle ones included)
    gathers: int = 0  # leader gathers (the step gather, and the extend counts' when a chunk may follow decode)
    gather_seconds: float = 0.0  # host time in those gathers (mostly waiting for the other leaders)
