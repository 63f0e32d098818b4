"""The one-gather DP-attention step: the real RankRunner control flow (slots, idle batches, graph buckets) on
fake leaders in threads, exchanging rows through a barrier that breaks when a leader skips or adds a collective.
No model: forwards and replays are recorded instead of run."""

from __future__ import annotations

import itertools
import threading
import types

import numpy as np
import pytest
import torch
from pdpair.engine.batch import ForwardMode
from pdpair.engine.distributed.dp_plan import GatherMode
from pdpair.engine.distributed.padding import idle_batch
from pdpair.engine.distributed.rank_runner import RankFailure, RankRunner
from pdpair.engine.distributed.topology import RankTopology

BUCKETS = (2, 4, 8)  # multiples of every attn_tp tested; 3 + 5 rows fit, 9 do not
DECODE, EXTEND = 3, 5


class Exchange:
    """An all-gather between `n` threads; every call is checked against the others' (same row length)."""

    def __init__(self, n: int) -> None:
        self.barrier = threading.Barrier(n, timeout=5)
        self.rows: list = [None] * n
        self.calls = [0] * n

    def gather(self, rank: int):
        def all_gather(row: list[int]) -> list[list[int]]:
            self.calls[rank] += 1
            self.rows[rank] = list(row)
            self.barrier.wait()
            out = [list(r) for r in self.rows]
            self.barrier.wait()
            if len({len(r) for r in out}) != 1:
                raise AssertionError(f"leaders ran different gathers: {out}")
            return out
        return all_gather


class FakeScheduler:
    """Runs its batches through the runner the way Scheduler.step does: decode (graph or eager), then extend."""

    def __init__(self, runner: RankRunner, decode: int, extend: int, pending: int) -> None:
        self.runner, self.decode, self.extend = runner, decode, extend
        self.prefill = [None] * pending  # prefill requests admitted before the decode batch runs

    def has_work(self) -> bool:
        return bool(self.decode or self.extend or self.prefill)

    def step(self) -> list:
        r = self.runner
        if self.decode:
            if r.use_graph(self.decode):
                rows = np.arange(self.decode, dtype=np.int64)
                r.replay_decode([1] * self.decode, rows, rows)
            else:
                r.forward(idle_batch(ForwardMode.DECODE, self.decode, torch.device("cpu")), torch.zeros(0))
        if self.extend:
            r.forward(idle_batch(ForwardMode.EXTEND, self.extend, torch.device("cpu")), torch.zeros(0))
        return []


def _runner(topo: RankTopology, graphs: bool, exchange: Exchange | None) -> tuple[RankRunner, list]:
    base = types.SimpleNamespace(model=None, backend=None, vocab_size=8,
                                 req_to_token=types.SimpleNamespace(table=torch.zeros(4, 8, dtype=torch.int32)))
    groups = types.SimpleNamespace(topo=topo, device=torch.device("cpu"), cpu_leaders=None, cpu_attn=None)
    dp = types.SimpleNamespace(info=None) if topo.enable_dp_attention else None
    runner = RankRunner(base, groups, dp)
    if exchange is not None:
        runner.sync.gather = exchange.gather(topo.dp_rank)
    ran: list = []
    runner._send = lambda msg: None  # the attention-TP followers are not part of this test
    runner._forward = lambda batch, info, rows: ran.append(("eager", batch.mode, batch.num_tokens, info))
    runner._replay_local = lambda msg: ran.append(("graph", ForwardMode.DECODE, msg.bucket, msg.info))
    if graphs:
        runner.decode_graphs = types.SimpleNamespace(buckets=BUCKETS)
    return runner, ran


def _step(dp: int, attn_tp: int, graphs: bool, cases: list[tuple[int, int, int]]):
    """One iteration of every leader; returns per DP rank (iterate's answer, the forwards it ran, gathers)."""
    exchange = Exchange(dp) if dp > 1 else None
    out: list = [None] * dp
    errors: list = []

    def leader(d: int) -> None:
        try:
            topo = RankTopology(dp * attn_tp, dp, True, rank=d * attn_tp)
            runner, ran = _runner(topo, graphs, exchange)
            answer = runner.iterate(FakeScheduler(runner, *cases[d]), False)
            out[d] = (answer, ran, runner.sync.gathers, runner.idle_forwards)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
            if exchange is not None:
                exchange.barrier.abort()

    threads = [threading.Thread(target=leader, args=(d,)) for d in range(dp)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    if errors:
        raise errors[0]
    if exchange is not None:
        assert len(set(exchange.calls)) == 1, f"leaders ran {exchange.calls} gathers"
    return out


def _padded(n: int, attn_tp: int) -> int:
    return max(1, -(-n // attn_tp)) * attn_tp


# a leader's step: (decode tokens, extend tokens, admitted prefill requests before the decode batch)
CASES = [(0, 0, 0), (0, 0, 1), (DECODE, 0, 0), (DECODE, 0, 1), (0, EXTEND, 1), (DECODE, EXTEND, 1)]


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
@pytest.mark.parametrize("attn_tp", [1, 2])
def test_two_leaders_agree_on_every_slot_with_one_gather_unless_a_chunk_may_follow_decode(attn_tp, graphs):
    for cases in itertools.product(CASES, repeat=2):
        out = _step(2, attn_tp, graphs, list(cases))
        decode = [c[0] for c in cases]
        extend = [c[1] for c in cases]
        # a second gather only when a leader with a decode batch may run a prefill chunk after it
        unknown = any(c[0] and c[2] for c in cases)
        for d, ((stop, work, _), ran, gathers, idle) in enumerate(out):
            assert not stop and work == any(c[0] or c[1] or c[2] for c in cases), cases
            assert gathers == 1 + unknown, (cases, d, gathers)
            want = []
            for mode, counts in ((ForwardMode.DECODE, decode), (ForwardMode.EXTEND, extend)):
                if any(counts):
                    want.append((mode, counts, tuple(_padded(n, attn_tp) for n in counts)))
            assert [mode for _, mode, _, _ in ran] == [w[0] for w in want], (cases, d, ran)
            assert idle == sum(1 for _, counts, _ in want if counts[d] == 0), (cases, d)
            for (kind, mode, rows, info), (_, _, padded) in zip(ran, want, strict=True):
                assert info.real_num_tokens == tuple(decode if mode is ForwardMode.DECODE else extend)
                if kind == "graph":  # every leader replays the bucket of the largest padded count
                    assert rows == next(b for b in BUCKETS if b >= max(padded))
                    assert info.global_num_tokens == (rows, rows) and info.mode is GatherMode.MAX_LEN
                else:
                    assert info.global_num_tokens == padded and rows == padded[d]
        infos = [[(k, m, i.global_num_tokens, i.mode) for k, m, _, i in ran] for _, ran, _, _ in out]
        assert infos[0] == infos[1], cases  # same slots, same gather layout and mode on both leaders


def test_skewed_counts_pick_offsets_on_both_leaders():
    out = _step(2, 1, False, [(0, 0, 0), (0, 40, 1)])
    (_, ran0, _, _), (_, ran1, _, _) = out
    assert ran0[0][3].mode is GatherMode.OFFSETS and ran1[0][3].mode is GatherMode.OFFSETS
    assert ran0[0][2] == 1 and ran1[0][2] == 40  # the idle leader pads to one row


@pytest.mark.parametrize("attn_tp", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_single_dp_rank_gathers_nothing_runs_no_idle_batch_and_pads_to_attn_tp(attn_tp, case):
    ((stop, work, _), ran, gathers, idle) = _step(1, attn_tp, False, [case])[0]
    assert gathers == 0 and idle == 0 and not stop and work == any(case)
    assert [(m, n) for _, m, n, _ in ran] == [(m, _padded(n, attn_tp)) for m, n in
                                             ((ForwardMode.DECODE, case[0]), (ForwardMode.EXTEND, case[1])) if n]
    assert all(info.global_num_tokens == (n,) for _, _, n, info in ran)


def test_stop_reaches_every_leader_after_the_same_iteration():
    exchange = Exchange(2)
    answers: list = [None, None]

    def leader(d: int) -> None:
        runner, _ = _runner(RankTopology(2, 2, True, rank=d), False, exchange)
        answers[d] = runner.iterate(FakeScheduler(runner, DECODE * d, 0, 0), stop=d == 0)[:2]

    threads = [threading.Thread(target=leader, args=(d,)) for d in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert answers == [(True, True), (True, True)]


def test_a_leader_that_breaks_its_announcement_fails_its_rank():
    """Decode announced with no prefill chunk possible, then an extend batch: the rank must fail, not hang."""
    runner, _ = _runner(RankTopology(2, 2, True, rank=0), False, None)
    runner.sync.gather = lambda row: [row, [0, 0, 0, 0]]
    sched = FakeScheduler(runner, DECODE, EXTEND, 0)
    sched.has_work = lambda: True
    with pytest.raises(RankFailure, match="extend batch of 5 tokens, 0 announced"):
        runner.iterate(sched, False)
