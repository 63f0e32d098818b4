"""Overlap scheduling (engine/scheduler/overlap.py) on the embedded SmolLM2: token-exact with the serial path.

Overlap is forced on here (CPU engines default to the serial path). A decode step then launches its batch
before reading the previous one's tokens, so stops are found one step late and aborts land while a forward
is in flight: no token after a stop may be emitted and no page may leak.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _engine_runtime_fixtures import make_engine, one_thread, prompts
from pdpair.engine import Request, SamplingParams, StepEvent
from pdpair.engine.batch import ForwardMode

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread


@pytest.fixture(scope="module")
def engines():
    return make_engine(max_pages=128, overlap_schedule=False), make_engine(max_pages=128, overlap_schedule=True)


class Spy:
    """Records the rids of every overlapped launch and every serial decode forward of an engine's runner."""

    def __init__(self, eng) -> None:
        self.launched: list[list[str]] = []
        self.serial: list[list[str]] = []
        self.failures: list[BaseException] = []  # a failed launch falls back to the serial path
        runner = eng.runner
        launch, run = runner.launch_decode, runner.run

        def spy_launch(reqs):
            try:
                pending = launch(reqs)
            except Exception as exc:
                self.failures.append(exc)
                raise
            self.launched.append([r.rid for r in reqs])
            return pending

        runner.launch_decode = spy_launch

        def spy_run(mode, reqs, lens):
            if mode is ForwardMode.DECODE:
                self.serial.append([r.rid for r in reqs])
            return run(mode, reqs, lens)

        runner.run = spy_run
        self.undo = lambda: (vars(runner).pop("launch_decode"), vars(runner).pop("run"))


def drive(eng, plan: dict[int, list[Request]], on_step=None) -> list[StepEvent]:
    """Submit each step's requests, step until idle; every event in order (`on_step(step, events)` first)."""
    events: list[StepEvent] = []
    step = 0
    while step <= max(plan) or eng.scheduler.has_work():
        for req in plan.get(step, []):
            eng.scheduler.submit(req)
        if on_step is not None:
            on_step(step, events)
        events += [ev for ev in eng.scheduler.step() if isinstance(ev, StepEvent)]
        step += 1
        assert step < 400, f"no progress: {eng.scheduler.stats()}"
    return events


def outputs(events: list[StepEvent]) -> dict[str, tuple[list[int], str]]:
    """rid -> (tokens, finish reason); asserts every request finished once, with its last event."""
    toks: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    for ev in events:
        assert ev.rid not in reasons, f"{ev.rid}: event after its finish ({reasons[ev.rid]}): {ev}"
        toks.setdefault(ev.rid, []).extend(ev.new_token_ids)
        if ev.finish_reason is not None:
            reasons[ev.rid] = ev.finish_reason
    assert set(reasons) == set(toks)
    return {rid: (toks[rid], reasons[rid]) for rid in toks}


def assert_clean(eng) -> None:
    assert not eng.scheduler.has_work()
    assert eng.pools.all_free(), eng.scheduler.stats()
    assert eng.req_to_token.num_free == eng.req_to_token.num_total
    eng.check_integrity()


def mixed_plan(eng, stop_tok: int, ids: list[list[int]] | None = None) -> dict[int, list[Request]]:
    chat, fib, fox, paris = ids or prompts(eng)
    greedy = dict(temperature=0.0)
    return {
        0: [Request("eos", chat, SamplingParams(max_new_tokens=30, **greedy)),  # EOS after 13 tokens
            Request("seeded", fox, SamplingParams(max_new_tokens=9, temperature=0.8, seed=5)),
            Request("stop-token", fib, SamplingParams(max_new_tokens=30, stop_token_ids=(stop_tok,), **greedy)),
            Request("stop-string", paris, SamplingParams(max_new_tokens=30, stop=" love", **greedy))],
        3: [Request("join-topk", paris, SamplingParams(max_new_tokens=7, temperature=0.9, top_k=20, seed=9))],
        20: [Request("penalised", fib, SamplingParams(max_new_tokens=4, repetition_penalty=1.3, **greedy))],
        26: [Request("join-late", fox, SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=2**63))],
    }


@pytest.mark.timeout(300)
def test_mixed_batch_matches_the_serial_path_token_for_token(engines):
    serial, overlap = engines
    fib = prompts(serial)[1]
    stop_tok = serial.generate([fib], SamplingParams(max_new_tokens=12, temperature=0.0))[0].token_ids[6]
    ref = outputs(drive(serial, mixed_plan(serial, stop_tok)))
    for rid in ("eos", "stop-token", "stop-string"):  # the plan stops these mid-batch
        assert ref[rid][1] == "stop" and len(ref[rid][0]) < 30, (rid, ref[rid])
    assert ref["stop-token"][0][-1] == stop_tok and stop_tok not in ref["stop-token"][0][:-1]
    spy = Spy(overlap)
    try:
        got = outputs(drive(overlap, mixed_plan(overlap, stop_tok)))
    finally:
        spy.undo()
    assert got == ref and not spy.failures
    assert len(spy.launched) >= 8, "overlap never ran"
    assert any("join-late" in b for b in spy.launched)  # overlap resumed after the penalised request left
    forwards = {rid: sum(rid in b for b in spy.launched + spy.serial) for rid in ref}
    for rid in ("eos", "stop-token", "stop-string", "seeded", "join-topk"):  # they finish while overlapped
        toks, reason = got[rid]
        # the first token comes from prefill; a stop is found one step late (one discarded row), a length
        # finish is known ahead (never launched past max_new_tokens)
        assert forwards[rid] == len(toks) - (reason == "length"), (rid, forwards[rid], len(toks), reason)
    assert all("penalised" not in b for b in spy.launched)  # penalties need the host's output ids
    assert any("penalised" in b for b in spy.serial)
    assert_clean(overlap)
    assert_clean(serial)


@pytest.mark.timeout(300)
def test_abort_while_in_flight_frees_after_the_forward_and_emits_nothing(engines):
    serial, overlap = engines
    ps = prompts(serial)
    sp = SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True)
    ref = [o.token_ids for o in serial.generate(ps, sp)]
    sched = overlap.scheduler
    free_at_abort = {}

    def abort_in_flight(step: int, events: list[StepEvent]) -> None:
        if step == 8:
            free_at_abort["emitted"] = sum(len(e.new_token_ids) for e in events if e.rid == "a1")
            inflight = sched._inflight
            assert inflight is not None and any(r.rid == "a1" for r in inflight.reqs), "nothing in flight"
            free = sched.resources.kv.num_free
            assert sched.abort("a1")
            # a1's pages are still written by the forward in flight: they are freed when it is read
            free_at_abort["after"] = sched.resources.kv.num_free
            free_at_abort["before"] = free

    events = drive(overlap, {0: [Request(f"a{i}", p, sp) for i, p in enumerate(ps)]}, abort_in_flight)
    assert free_at_abort["after"] == free_at_abort["before"]
    got = {rid: toks for rid, (toks, _) in outputs([e for e in events if e.rid != "a1"]).items()}
    assert got == {f"a{i}": ref[i] for i in range(len(ps)) if i != 1}
    a1 = [t for e in events if e.rid == "a1" for t in e.new_token_ids]
    assert len(a1) == free_at_abort["emitted"] and 0 < len(a1) < 16 and a1 == ref[1][: len(a1)]
    assert all(e.finish_reason is None for e in events if e.rid == "a1")
    assert_clean(overlap)


@pytest.mark.timeout(300)
def test_retraction_and_prefix_cache_under_overlap_match_serial():
    """A tight pool retracts decode requests while a batch is in flight; the prefix cache adopts the pages
    of requests that stopped a step late. Outputs equal the serial path's; every page is accounted for."""
    ps = [list(range(100 + i, 110 + i)) for i in range(4)]
    sps = [SamplingParams(max_new_tokens=14, temperature=0.0, ignore_eos=True),
           SamplingParams(max_new_tokens=12, temperature=0.7, seed=11, ignore_eos=True),
           SamplingParams(max_new_tokens=14, temperature=0.0, ignore_eos=True),
           SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True)]
    outs = {}
    for overlap in (False, True):
        eng = make_engine(page_size=4, max_pages=14, overlap_schedule=overlap, prefix_cache=True)
        retracted = []
        orig = eng.scheduler._retract
        eng.scheduler._retract = lambda req, events, o=orig, r=retracted: (r.append(req.rid), o(req, events))
        outs[overlap] = [(o.token_ids, o.finish_reason) for o in eng.generate(ps, sps)]
        assert retracted, "the pool was large enough: nothing exercised retraction"
        assert not eng.scheduler.has_work()
        eng.check_integrity()
        kv = eng.scheduler.resources.kv
        assert kv.num_free + eng.prefix_cache.num_pages == kv.num_total  # nothing held but the cache's pages
    assert outs[True] == outs[False]


def test_overlap_is_on_for_cuda_only_unless_asked():
    assert not make_engine().config.overlap_schedule  # CPU: torch ops are synchronous, nothing to overlap
    assert make_engine(overlap_schedule=True).scheduler.overlap


@pytest.mark.gpu
@pytest.mark.timeout(300)
def test_cuda_graphs_overlapped_match_serial(tmp_path):
    """On CUDA (triton backend, decode graphs gathering the pending tokens on the device) overlap is the
    default and matches the serial path token for token (fp32 seeded weights of SmolLM2's shape: the embedded
    checkpoint does not travel to GPU machines)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from pdpair.engine import Engine
    from pdpair.engine.loader import load_model

    from tests.kernels._attention_engine_fixtures import make_seeded_model_dir

    model_dir = make_seeded_model_dir(tmp_path, dtype=torch.float32)
    loaded = load_model(str(model_dir), device="cuda", dtype=torch.float32)
    serial = Engine.from_loaded(loaded, device="cuda", max_pages=256, overlap_schedule=False)
    overlap = Engine.from_loaded(loaded, device="cuda", max_pages=256)
    assert overlap.config.overlap_schedule and overlap.runner.graphs is not None
    ids = [list(range(100, 113)), list(range(200, 207)), list(range(300, 318)), list(range(400, 403))]
    stop_tok = serial.generate([ids[1]], SamplingParams(max_new_tokens=12, temperature=0.0))[0].token_ids[6]
    ref = outputs(drive(serial, mixed_plan(serial, stop_tok, ids)))
    replays = overlap.runner.graphs.num_replays
    spy = Spy(overlap)
    try:
        got = outputs(drive(overlap, mixed_plan(overlap, stop_tok, ids)))
    finally:
        spy.undo()
    assert got == ref and not spy.failures
    assert len(spy.launched) >= 8 and overlap.runner.graphs.num_replays - replays >= len(spy.launched)
    assert_clean(overlap)


@pytest.mark.timeout(300)
def test_sliding_window_pages_outlive_the_forward_in_flight(tmp_path):
    """A sliding-window model: trimming before a launch keeps the window pages of the batch still in flight
    (another owner could write a page freed too early while that forward reads it), and outputs equal the
    serial path's."""
    from pdpair.engine import Engine
    from pdpair.engine.request import PENDING_TOKEN

    from tests.swa_models import FAMILIES, VOCAB, save_tiny_swa

    save_tiny_swa(FAMILIES[0], 8, tmp_path)
    seqs = [[(97 + 131 * i + 7 * n) % (VOCAB - 3) + 3 for i in range(n)] for n in (5, 9, 17)]
    sp = SamplingParams(max_new_tokens=20, temperature=0.0, ignore_eos=True)
    outs = {}
    for overlap in (False, True):
        eng = Engine.from_model(str(tmp_path), device="cpu", dtype="float32", page_size=4, max_pages=64,
                                overlap_schedule=overlap)
        res, launch, checked, trimmed_early = eng.scheduler.resources, eng.runner.launch_decode, [], []

        def check_then_launch(reqs, res=res, launch=launch, checked=checked, early=trimmed_early):
            for r in reqs:
                if r.output_ids[-1] == PENDING_TOKEN:  # the batch launched before reads position num_cached - 1
                    checked.append(r.rid)
                    if r.items_first["swa"] > res.first_live_page("swa", r.num_cached - 1):
                        early.append((r.rid, r.num_cached))  # (raising here would only fall back to serial)
            return launch(reqs)

        eng.runner.launch_decode = check_then_launch
        outs[overlap] = [o.token_ids for o in eng.generate(seqs, sp)]
        assert bool(checked) == overlap and not trimmed_early, trimmed_early
        assert eng.pools.all_free()
        eng.check_integrity()
    assert outs[True] == outs[False]


@pytest.mark.timeout(300)
def test_detach_while_in_flight_hands_items_over_and_emits_nothing(engines):
    """A quarantining abort detaches a running request: its items go to the caller once the forward in flight
    that writes them has run, and its token of that batch is never emitted."""
    _, overlap = engines
    sched = overlap.scheduler
    sp = SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True)
    held, emitted = {}, {}

    def detach_in_flight(step: int, events: list[StepEvent]) -> None:
        if step == 5:
            assert sched._inflight is not None and any(r.rid == "d1" for r in sched._inflight.reqs)
            emitted["before"] = sum(len(e.new_token_ids) for e in events if e.rid == "d1")
            held.update(sched.detach("d1"))

    events = drive(overlap, {0: [Request(f"d{i}", p, sp) for i, p in enumerate(prompts(overlap)[1:])]},
                   detach_in_flight)
    assert sum(len(e.new_token_ids) for e in events if e.rid == "d1") == emitted["before"] > 0
    assert {rid for rid, (toks, _) in outputs([e for e in events if e.rid != "d1"]).items() if len(toks) == 10} \
        == {"d0", "d2"}
    overlap.check_integrity(held={k: [v] for k, v in held.items()})
    for kind, ids in held.items():
        overlap.pools.allocator(kind).free(ids)
    assert_clean(overlap)


def _random_plan(seed: int) -> dict[int, list[tuple]]:
    rng = np.random.default_rng(seed)
    plan: dict[int, list[tuple]] = {}
    for i in range(40):
        kind = rng.random()
        sp = SamplingParams(max_new_tokens=int(rng.integers(1, 20)), temperature=float(rng.choice([0.0, 0.8])),
                            seed=int(rng.integers(1000)), ignore_eos=bool(kind > 0.5),
                            stop_token_ids=tuple(int(t) for t in rng.integers(0, 512, 30)) if kind < 0.4 else (),
                            repetition_penalty=1.2 if kind > 0.9 else 1.0)
        plan.setdefault(int(rng.integers(0, 60)), []).append(
            (f"r{i}", rng.integers(3, 512, int(rng.integers(1, 30))).tolist(), sp))
    return plan


@pytest.mark.timeout(120)
def test_random_traffic_matches_serial_under_page_pressure():
    """Random arrivals, lengths, samplers, stop ids and a few penalised requests on a tight pool (admission
    waits, decode retracts) through a tiny model, with and without the prefix cache: overlapped events equal
    the serial ones and every page is accounted for after every step."""
    from pdpair.engine import Engine

    from tests.integration._engine_runtime_fixtures import tiny_loaded

    totals = {"launched": 0, "retracted": 0}
    for seed in range(6):
        plan = _random_plan(seed)
        for prefix_cache in (False, True):
            results = {}
            for overlap in (False, True):
                eng = Engine.from_loaded(tiny_loaded("cpu"), device="cpu", page_size=4, max_pages=40, chunk_size=32,
                                         max_running_requests=12, overlap_schedule=overlap, prefix_cache=prefix_cache)
                spy, retracted = Spy(eng), []
                orig = eng.scheduler._retract
                eng.scheduler._retract = lambda req, events, o=orig, r=retracted: (r.append(req.rid), o(req, events))
                reqs = {step: [Request(rid, ids, sp) for rid, ids, sp in group] for step, group in plan.items()}
                results[overlap] = outputs(drive(eng, reqs, lambda step, events, e=eng: e.check_integrity()))
                assert not spy.failures and bool(spy.launched) == overlap
                if overlap:
                    totals["launched"] += len(spy.launched)
                    totals["retracted"] += len(retracted)
                kv = eng.scheduler.resources.kv
                assert kv.num_free + (eng.prefix_cache.num_pages if prefix_cache else 0) == kv.num_total
            assert results[True] == results[False], (seed, prefix_cache)
    assert totals["launched"] > 100 and totals["retracted"] > 0, totals


def test_a_runner_with_its_own_forward_stays_serial(engines):
    """A multi-rank runner (RankRunner) overrides the forward hooks to join collectives in the step's slot
    order: overlap must stay off for it, whatever the config says."""
    from pdpair.engine.distributed.rank_runner import RankRunner
    from pdpair.engine.runner import ModelRunner

    rank_runner = RankRunner.__new__(RankRunner)  # no process groups needed to ask
    rank_runner.dumper = None
    assert not rank_runner.supports_overlap
    serial, overlap = engines

    class OwnForward(ModelRunner):
        def forward(self, batch, logits_rows):
            return ModelRunner.forward(self, batch, logits_rows)

    runner = overlap.runner
    assert runner.supports_overlap
    runner.__class__ = OwnForward
    spy = Spy(overlap)
    try:
        sp = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
        got = overlap.generate(prompts(overlap)[1:3], sp)
    finally:
        spy.undo()
        runner.__class__ = ModelRunner
    assert not spy.launched and spy.serial
    assert [o.token_ids for o in got] == [o.token_ids for o in serial.generate(prompts(serial)[1:3], sp)]
