"""The in-process twin of disaggregation for sliding-window models: the prefill-only engine announces `kv`
pages per chunk and the `swa` window tail once, with the last chunk; the decode engine reserves only that tail;
after the items are copied id for id the decode side holds the prefill side's window byte for byte and
generates what a colocated engine and transformers generate."""

from __future__ import annotations

import pytest
import torch
from _engine_runtime_fixtures import finish_like_colocated, prefill_only

from tests.swa_models import VOCAB, save_tiny_swa

pytestmark = pytest.mark.timeout(300)
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")

PAGE, WINDOW, CHUNK = 4, 7, 6
NEW = 2 * WINDOW + 2  # decodes past two windows


@pytest.fixture(scope="module", params=["qwen3", "gemma3"])
def engines(request, tmp_path_factory):
    from pdpair.engine import Engine

    path = tmp_path_factory.mktemp(f"swa-disagg-{request.param}")
    hf = save_tiny_swa(request.param, WINDOW, path)
    make = lambda **kw: Engine.from_model(str(path), device="cpu", dtype="float32", page_size=PAGE,  # noqa: E731
                                          max_pages=96, **kw)
    return hf, make(chunk_size=CHUNK), make(), make()


def _tail(n: int) -> tuple[int, int]:
    """Pages over [floor_to_page(n - (WINDOW - 1)), n), brute force over the keys the next query sees."""
    pages = sorted({k // PAGE for k in range(max(0, n - WINDOW + 1), n)} | ({n // PAGE} if n % PAGE else set()))
    return pages[0], pages[-1] + 1


@pytest.mark.parametrize("n, seeded", [(5, False), (WINDOW, False), (WINDOW + 1, False), (4 * PAGE, False),
                                       (29, False), (4 * PAGE, True)])
def test_window_tail_moves_once_and_decode_matches(engines, n, seeded):
    from pdpair.engine import Request, SamplingParams

    hf, prefill, decode, colocated = engines
    ids = [(31 * i + 7 * n) % (VOCAB - 3) + 3 for i in range(n)]
    sp = (SamplingParams(max_new_tokens=NEW, temperature=0.9, top_p=0.95, seed=11, ignore_eos=True)
          if seeded else SamplingParams(max_new_tokens=NEW, temperature=0.0, ignore_eos=True))
    rid = f"r{n}{seeded}"
    dst = decode.scheduler.preallocate(Request(rid, ids, sp))
    first, end = _tail(n)
    assert {k: len(v) for k, v in dst.items()} == {"kv": -(-n // PAGE), "swa": end - first}

    chunks, req = prefill_only(prefill, rid, ids, sp)
    assert len(chunks) == -(-n // CHUNK)
    assert all("swa" not in c.kind_pages for c in chunks[:-1])  # the window goes once, with the last chunk
    last = chunks[-1]
    assert last.kind_starts["swa"] == 0 and len(last.kind_pages["swa"]) == end - first
    assert sum(len(c.kind_pages["kv"]) for c in chunks) == len(dst["kv"])
    # the prefill side already gave back the SWA pages behind the window
    assert prefill.pools.allocator("swa").num_used == end - first
    for c in chunks:
        for kind, src in c.kind_pages.items():
            lo = c.kind_starts[kind]
            target = dst[kind][lo : lo + len(src)]
            decode.pools.pool(kind).buffer[target] = prefill.pools.pool(kind).buffer[src]
    src_swa = prefill.pools.pool("swa").buffer[last.kind_pages["swa"]].clone()
    prefill.scheduler.release(rid)
    # byte for byte, every layer of the window (and not trivially: the pages hold computed K/V)
    got = decode.pools.pool("swa").buffer[dst["swa"]]
    assert torch.equal(got.view(torch.int32), src_swa.view(torch.int32)) and got.abs().sum() > 0

    finish_like_colocated(prefill, decode, colocated, rid, ids, sp, last.first_token, NEW, None if seeded else hf)
