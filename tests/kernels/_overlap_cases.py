"""Overlap scheduling through the decode-graph runner's staged inputs, run eagerly on CPU (interpreted kernels)."""

from __future__ import annotations

import numpy as np
import torch


def graph_staging_case() -> dict[str, bool]:
    """Overlapped decode whose inputs go through `DecodeCudaGraphs` staging (pack, upload, `_derive` with the
    runner's `row_tokens` as token source), padded to buckets: tokens equal the serial eager engine's, pending
    ids were staged, and every page is free afterwards."""
    from types import SimpleNamespace

    from pdpair.engine import Engine, SamplingParams
    from pdpair.engine.cuda_graph import DecodeCudaGraphs

    from tests.integration._engine_runtime_fixtures import tiny_loaded
    from tests.kernels._attention_engine_fixtures import eager_logits

    loaded = tiny_loaded("cpu")
    prompts = [[5, 6, 7], list(range(3, 12)), [9] * 6, [4, 8]]
    make = lambda overlap: Engine.from_loaded(loaded, device="cpu", page_size=4, max_pages=64,  # noqa: E731
                                              attention_backend="triton", max_running_requests=8,
                                              overlap_schedule=overlap)
    greedy = SamplingParams(max_new_tokens=9, temperature=0.0, ignore_eos=True)
    stop_tok = make(False).generate([prompts[0]], greedy)[0].token_ids[4]
    sps = [SamplingParams(max_new_tokens=9, temperature=0.0, stop_token_ids=(stop_tok,), ignore_eos=True),
           SamplingParams(max_new_tokens=6, temperature=1.0, seed=3, ignore_eos=True),
           greedy, SamplingParams(max_new_tokens=4, temperature=0.7, top_k=8, seed=7, ignore_eos=True)]
    ref = [(o.token_ids, o.finish_reason) for o in make(False).generate(prompts, sps)]
    eng = make(True)
    graphs = DecodeCudaGraphs(eng.runner.model, eng.runner.backend, eng.req_to_token.table, 8,
                              eng.req_to_token.max_context, buckets=(2, 4, 8), token_source=eng.runner.row_tokens)
    pending = []

    def replay_staged(ids, positions, rows):  # what a graph replay runs, eagerly: inputs in, `_derive`, model
        b, padded = len(ids), graphs.bucket(len(ids))
        pending.append(sum(t < 0 for t in ids))
        host = np.zeros(graphs.inputs.shape[0], dtype=np.int64)
        graphs.pack_inputs(host, ids, positions, rows)
        graphs.inputs.copy_(torch.from_numpy(host))
        graphs._derive(padded)
        return eager_logits(eng, graphs._static_batch(padded))[:b]

    eng.runner.graphs = SimpleNamespace(fits=lambda b: 0 < b <= 8, replay_staged=replay_staged,
                                        staged_rows=graphs.staged_rows)
    launch, failures = eng.runner.launch_decode, []

    def counted(reqs):  # a failed launch falls back to the serial path: it must not be what passes here
        try:
            return launch(reqs)
        except Exception as exc:
            failures.append(exc)
            raise

    eng.runner.launch_decode = counted
    got = [(o.token_ids, o.finish_reason) for o in eng.generate(prompts, sps)]
    eng.check_integrity()
    return {"tokens": got == ref, "stopped": ref[0][1] == "stop" and len(ref[0][0]) < 9,
            "pending_staged": sum(pending) > 0, "pools_free": eng.pools.all_free(), "launch_failures": len(failures)}
