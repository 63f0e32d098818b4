"""The token aligner and the comparator on synthetic dumps: chunked vs one-shot, DP padded gathers vs TP,
per-request logits rows, shape mismatch, missing tensors, tolerance edges, JSON output and exit codes."""

from __future__ import annotations

import json

import pytest
import torch
from pdpair.engine.debug import align, compare, read_runs
from pdpair.engine.debug.cli import main as compare_main

from tests.unit._dump_fixtures import H, hidden, record, write_run

SEQ = hidden(7)  # a request's per-position rows: 5 prompt tokens, then 2 decode steps


def one_shot(root, name="base", rows=SEQ, logits=None):
    """Prefill 5 tokens in one step, then decode positions 5 and 6."""
    logits = SEQ[:, :4] * 3 if logits is None else logits
    steps = [(record(0, ["r"], [5], [5], [4]), {"embed": (rows[:5], "token"), "logits": (logits[4:5], "logits")})]
    for p in (5, 6):
        steps.append((record(p - 4, ["r"], [p + 1], [1], [0]),
                      {"embed": (rows[p:p + 1], "token"), "logits": (logits[p:p + 1], "logits")}))
    return write_run(root, name, steps)


def chunked(root, name="tgt", rows=SEQ):
    """The same request prefilled in chunks of 3 + 2 on one node, decoded on another (a run per node)."""
    logits = SEQ[:, :4] * 3
    prefill = write_run(root / "p", name, [
        (record(0, ["r"], [3], [3]), {"embed": (rows[:3], "token")}),  # no logits row mid-prompt
        (record(1, ["r"], [5], [2], [1]), {"embed": (rows[3:5], "token"), "logits": (logits[4:5], "logits")})])
    decode = write_run(root / "d", name, [
        (record(7 + p, ["r"], [p + 1], [1], [0]), {"embed": (rows[p:p + 1], "token"),
                                                    "logits": (logits[p:p + 1], "logits")}) for p in (5, 6)])
    return prefill, decode


def report(base, *target, aligner="concat_steps", **kw):
    return compare(align(read_runs(base), aligner), align(read_runs(*target), aligner), **kw)


def test_chunked_prefill_on_two_nodes_equals_one_shot(tmp_path):
    rep = report(one_shot(tmp_path), *chunked(tmp_path))
    assert rep.ok and [(r.name, r.status) for r in rep.results] == [("embed", "passed"), ("logits", "passed")]
    assert rep.results[0].max_abs_diff == 0.0
    # file by file the two schedules do not line up
    assert not report(one_shot(tmp_path, "b2"), *chunked(tmp_path, "t2"), aligner="none").ok


def test_a_changed_row_is_named_by_request_and_position(tmp_path):
    bad = SEQ.clone()
    bad[6, 3] += 0.5
    rep = report(one_shot(tmp_path), *chunked(tmp_path, rows=bad))
    h = rep.results[0]
    assert (h.status, h.first_key, h.first_token) == ("failed", "r", 6)
    assert h.max_abs_diff == pytest.approx(0.5, rel=1e-5)
    assert rep.results[1].status == "passed" and not rep.ok
    assert "first difference: embed (failed, r token 6)" in rep.summary()


def test_logits_rows_follow_their_requests_in_a_mixed_batch(tmp_path):
    """Two requests batched: logits rows map through logits_rows to (request, position)."""
    a, b = hidden(4, seed=1), hidden(3, seed=2)
    la, lb = a * 2, b * 2
    base = write_run(tmp_path, "base", [
        (record(0, ["a"], [4], [4], [3]), {"embed": (a, "token"), "logits": (la[3:], "logits")}),
        (record(1, ["b"], [3], [3], [2]), {"embed": (b, "token"), "logits": (lb[2:], "logits")})])
    # one step: a's last two prompt tokens after its first two were cached, and all of b; logits for both
    tgt1 = write_run(tmp_path, "t1", [(record(0, ["a"], [2], [2]), {"embed": (a[:2], "token")})])
    tgt2 = write_run(tmp_path, "t2", [(record(0, ["a", "b"], [4, 3], [2, 3], [1, 4]), {
        "embed": (torch.cat([a[2:], b, hidden(3, seed=9)]), "token"),  # 3 padding rows past num_tokens
        "logits": (torch.cat([la[3:], lb[2:]]), "logits")})])
    assert report(base, tgt1, tgt2).ok
    swapped = write_run(tmp_path, "t3", [(record(0, ["a", "b"], [4, 3], [2, 3], [1, 4]), {
        "embed": (torch.cat([a[2:], b]), "token"), "logits": (torch.cat([lb[2:], la[3:]]), "logits")})])
    rep = report(base, tgt1, swapped)
    assert [r.status for r in rep.results] == ["passed", "failed"] and rep.results[1].first_key == "a"


def test_dp_attention_padded_gather_aligns_with_tp(tmp_path):
    """DP attention over 2 ranks, one request on rank 0: its gathered [6, h] holds 5 real rows plus the
    idle rank's padding row; rank 1 dumps the same gather with no request of its own. TP baseline: [5, h]."""
    tp = write_run(tmp_path, "tp", [(record(0, ["r"], [5], [5]), {"g": (SEQ[:5], "gathered")})])
    gathered = torch.cat([SEQ[:5], torch.full((1, H), 1e6)])
    dp = dict(dp_size=2, global_num_tokens=[5, 0], global_padded_tokens=[5, 1])
    r0 = write_run(tmp_path / "dp", "rank0", [(record(0, ["r"], [5], [5], **dp), {"g": (gathered, "gathered")})])
    r1 = write_run(tmp_path / "dp", "rank1", [(record(0, [], [], [], rank=1, **dp), {"g": (gathered, "gathered")})],
                   rank=1)
    assert gathered.shape == (6, H) and SEQ[:5].shape == (5, H)
    rep = report(tp, r0, r1)
    assert rep.ok, rep.text()
    # file by file the padding row remains: [6, h] against [5, h]
    rep = report(tp, r0, aligner="none")
    assert rep.results[0].status == "shape mismatch" and "[6, 8]" in rep.results[0].detail
    # the request on rank 1: its rows start after rank 0's padding row
    dp1 = dict(dp_size=2, global_num_tokens=[0, 5], global_padded_tokens=[1, 5])
    shifted = torch.cat([torch.full((1, H), -1e6), SEQ[:5]])
    q0 = write_run(tmp_path / "dp2", "rank0", [(record(0, [], [], [], **dp1), {"g": (shifted, "gathered")})])
    q1 = write_run(tmp_path / "dp2", "rank1", [(record(0, ["r"], [5], [5], rank=1, **dp1),
                                                {"g": (shifted, "gathered")})], rank=1)
    assert report(tp, q0, q1).ok
    assert report(tp, tmp_path / "dp2").ok  # a directory of runs reads the same


def test_shape_mismatch_and_missing(tmp_path):
    base = write_run(tmp_path, "base", [(record(0, ["r"], [5], [5]), {"embed": (SEQ[:5], "token"),
                                                                       "only_base": (SEQ[:5], "token")})])
    wide = write_run(tmp_path, "wide", [(record(0, ["r"], [5], [5]), {"embed": (torch.zeros(5, H + 1), "token"),
                                                                       "only_target": (SEQ[:5], "token")})])
    rep = report(base, wide)
    by = {r.name: r for r in rep.results}
    assert by["embed"].status == "shape mismatch" and "[5, 9]" in by["embed"].detail
    assert by["only_base"].status == "missing" and "target" in by["only_base"].detail
    assert by["only_target"].status == "missing" and "baseline" in by["only_target"].detail
    assert rep.counts == {"passed": 0, "failed": 0, "shape mismatch": 1, "missing": 2}
    # fewer positions for the request (a step not dumped): shape mismatch naming the positions
    short = write_run(tmp_path, "short", [(record(0, ["r"], [4], [4]), {"embed": (SEQ[:4], "token")})])
    h = report(base, short).results[0]
    assert h.status == "shape mismatch" and "positions 0..3" in h.detail
    # another request id: missing, naming the id
    other = write_run(tmp_path, "other", [(record(0, ["x"], [5], [5]), {"embed": (SEQ[:5], "token")})])
    h = report(base, other).results[0]
    assert h.status == "missing" and "r (target)" in h.detail and "x (baseline)" in h.detail


def test_tolerance_edges(tmp_path):
    base_t = torch.tensor([[1.0, 100.0, 0.0, float("nan")]])
    base = write_run(tmp_path, "base", [(record(0, ["r"], [1], [1]), {"embed": (base_t, "token")})])

    def status(delta, atol, rtol, name):
        t = write_run(tmp_path, name, [(record(0, ["r"], [1], [1]), {"embed": (base_t + delta, "token")})])
        return report(base, t, atol=atol, rtol=rtol).results[0].status

    # |d| <= atol + rtol * |baseline|, element-wise; NaN in the same place is equal
    assert status(torch.tensor([[0.5, 0.0, 0.0, 0.0]]), 0.5, 0.0, "a") == "passed"
    assert status(torch.tensor([[0.5001, 0.0, 0.0, 0.0]]), 0.5, 0.0, "b") == "failed"
    assert status(torch.tensor([[0.0, 0.99, 0.0, 0.0]]), 0.0, 0.01, "c") == "passed"  # 0.01 * 100
    assert status(torch.tensor([[0.0, 1.01, 0.0, 0.0]]), 0.0, 0.01, "d") == "failed"
    assert status(torch.tensor([[0.0, 0.0, 1e-7, 0.0]]), 0.0, 0.5, "e") == "failed"  # rtol alone: 0 stays 0
    nan = write_run(tmp_path, "nan", [(record(0, ["r"], [1], [1]), {"embed": (torch.full((1, 4), float("nan")), "token")})])
    assert report(base, nan).results[0].status == "failed"  # NaN where the baseline has numbers
    with pytest.raises(ValueError, match="non-negative"):
        report(base, base, atol=-1)


def test_cli_json_text_and_exit_codes(tmp_path, capsys):
    base = one_shot(tmp_path)
    bad = SEQ.clone()
    bad[2, 0] = 9.0
    prefill, decode = chunked(tmp_path, rows=bad)
    assert compare_main(["--baseline", str(base), "--target", str(prefill), str(decode), "--format", "json"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["ok"] is False and body["counts"] == {"passed": 1, "failed": 1, "shape mismatch": 0, "missing": 0}
    h = next(r for r in body["results"] if r["name"] == "embed")
    assert (h["status"], h["first_key"], h["first_token"]) == ("failed", "r", 2)
    assert h["max_abs_diff"] == pytest.approx(abs(9.0 - SEQ[2, 0].item()), rel=1e-5)
    # --filter keeps only the matching tensors: logits alone pass
    assert compare_main(["--baseline", str(base), "--target", str(prefill), str(decode), "--filter", "^logits$"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("passed          logits  max_abs=0.000e+00")
    assert out[-1].startswith("summary: 1 passed, 0 failed, 0 shape mismatch, 0 missing of 1 tensors")
    # --requests with no matching request: nothing to compare is not a pass
    assert compare_main(["--baseline", str(base), "--target", str(prefill), "--requests", "^nobody$"]) == 1
    assert "nothing to compare" in capsys.readouterr().out
    assert compare_main(["--baseline", str(tmp_path / "absent"), "--target", str(base)]) == 2
    assert "no tensor dump at" in capsys.readouterr().err


def test_context_rows_cover_each_requests_whole_context():
    """`context` tensors (the indexer keys a step reads) hold every request's context back to back."""
    from pdpair.engine.debug.aligner import request_rows
    from pdpair.engine.debug.format import StepRecord

    rec = StepRecord(step=1, rank=0, mode="decode", rids=["a", "b"], seq_lens=[3, 2], extend_lens=[1, 1],
                     logits_rows=[0, 1])
    assert request_rows(rec, "context") == [("a", [(0, 0), (1, 1), (2, 2)]), ("b", [(3, 0), (4, 1)])]
