"""SamplingCache: a decode batch's sampling tensors are reused only while every row keeps its params and seed.

Each step's tokens are checked against every row sampled alone from a fresh `SamplingBatch.build` (seeded draws
depend only on (seed, position)), so a stale cache (old params, seeds, row order or positions) fails them.
"""

import numpy as np
import torch
from pdpair.engine.request import Request
from pdpair.engine.sampler import SamplingBatch, sample
from pdpair.engine.sampling import SamplingParams
from pdpair.engine.sampling_cache import SamplingCache
from pdpair.engine.staging import HostRing

V = 50
LOGITS = torch.randn(8, V, generator=torch.Generator().manual_seed(5)) * 0.5  # flat: draws vary with the key


def _req(rid: str, seed: int, **sp) -> Request:
    req = Request(rid, [1, 2, 3], SamplingParams(**sp))
    req.seed = seed
    return req


def _alone(reqs: list[Request], positions: list[int]) -> list[int]:
    return [int(sample(LOGITS[i : i + 1], SamplingBatch.build([r.sampling], [r.seed], [p], V, "cpu",
                                                              [r.input_ids], [r.output_ids]))[0])
            for i, (r, p) in enumerate(zip(reqs, positions, strict=True))]


def _step(cache: SamplingCache, reqs: list[Request], positions: list[int]) -> list[int]:
    got = sample(LOGITS[: len(reqs)], cache.batch(reqs, np.asarray(positions, dtype=np.int64))).tolist()
    assert got == _alone(reqs, positions), (got, positions)
    return got


def test_reused_while_unchanged_rebuilt_on_any_row_change():
    cache = SamplingCache(V, "cpu")
    a, b = _req("a", 1, temperature=0.0), _req("b", 2, temperature=1.5)
    c, d = _req("c", 3, temperature=1.2, top_k=7), _req("d", 4, temperature=0.9, top_p=0.8)
    batch = [a, b, c]
    seen = [_step(cache, batch, [10, 20, 30])]
    for k in range(1, 4):  # the same rows decode on: built once, the positions move
        seen.append(_step(cache, batch, [10 + k, 20 + k, 30 + k]))
    assert cache.builds == 1
    assert len({tuple(t[1:]) for t in seen}) > 1, "the draws never moved with the position: the test is blind"
    b.sampling = SamplingParams(temperature=0.0)  # a row's params change
    _step(cache, batch, [14, 24, 34])
    assert cache.builds == 2
    batch = [a, b, c, d]  # a request joins
    _step(cache, batch, [15, 25, 35, 40])
    batch = [b, c, d]  # one leaves: the rows shift
    _step(cache, batch, [26, 36, 41])
    assert cache.builds == 4
    c.seed = 99  # a row's seed changes
    _step(cache, batch, [27, 37, 42])
    assert cache.builds == 5
    _step(cache, [b, d, c], [28, 43, 38])  # the same rows, reordered
    assert cache.builds == 6
    c2 = _req("c2", 99, temperature=1.2, top_k=7)  # an equal request in c's place: equal tensors, reused
    _step(cache, [b, d, c2], [29, 44, 39])
    assert cache.builds == 6


def test_greedy_batch_is_the_same_object_and_penalties_never_cached():
    cache = SamplingCache(V, "cpu")
    g = [_req(f"g{i}", i, temperature=0.0) for i in range(3)]
    first = cache.batch(g, np.arange(3))
    assert cache.batch(g, np.arange(3) + 1) is first and cache.builds == 1
    pen = _req("p", 7, temperature=1.0, repetition_penalty=1.3)
    batch = [*g, pen]
    for k in range(3):  # built every step: the penalties read the output history, which grows
        _step(cache, batch, [5 + k, 6 + k, 7 + k, 8 + k])
        pen.output_ids.append(int(LOGITS[3].argmax()))
    assert cache.builds == 4
    assert cache.batch(g, np.arange(3)) is first  # the penalised batches left the cached one alone


def test_host_ring_turns_and_ownership():
    ring = HostRing(4, torch.long, 3, cuda=False)
    turns = [ring.take() for _ in range(3)]
    assert [t for t, _ in turns] == [0, 1, 2]
    assert len({b.data_ptr() for _, b in turns}) == 3
    assert ring.owns(0) and ring.owns(2)
    turn, buf = ring.take()
    assert turn == 3 and buf.data_ptr() == turns[0][1].data_ptr()  # round again: turn 0's buffer is reused
    assert not ring.owns(0) and ring.owns(1)
