"""Penalties and logit_bias against an independent per-row reference and transformers; u64 seeds; tiny temps."""

import pytest
import torch
from pdpair.engine.sampler import SamplingBatch, sample, seed_bits
from pdpair.engine.sampling import SamplingParams

V = 40


def _reference(logits: torch.Tensor, p: SamplingParams, prompt: list[int], output: list[int]) -> torch.Tensor:
    """One row, written out token by token: bias, repetition (prompt+output), presence/frequency (output)."""
    out = logits.clone()
    for tid, b in p.logit_bias:
        out[tid] += b
    for tid in set(prompt) | set(output):
        if p.repetition_penalty != 1:
            out[tid] = out[tid] / p.repetition_penalty if out[tid] > 0 else out[tid] * p.repetition_penalty
    for tid in set(output):
        n = output.count(tid)
        out[tid] -= p.frequency_penalty * n + p.presence_penalty
    return out


def _batch(params, prompts, outputs, seeds=None):
    seeds = seeds or [7] * len(params)
    positions = [len(a) + len(b) for a, b in zip(prompts, outputs, strict=True)]
    return SamplingBatch.build(params, seeds, positions, V, "cpu", prompts, outputs)


def test_penalties_match_reference_rowwise():
    g = torch.Generator().manual_seed(1)
    params = [
        SamplingParams(temperature=0, presence_penalty=1.5),
        SamplingParams(temperature=0, frequency_penalty=-0.7, presence_penalty=0.3),
        SamplingParams(temperature=0, repetition_penalty=1.8),
        SamplingParams(temperature=0, logit_bias={3: 100.0, 5: -42.5}),
        SamplingParams(temperature=0),  # untouched in a batch with penalties
        SamplingParams(temperature=0, repetition_penalty=0.6, frequency_penalty=2.0, logit_bias={0: -3.0}),
    ]
    prompts = [torch.randint(0, V, (9,), generator=g).tolist() for _ in params]
    outputs = [torch.randint(0, V, (n,), generator=g).tolist() for n in (0, 12, 5, 3, 7, 20)]
    logits = torch.randn(len(params), V, generator=g) * 4
    sb = _batch(params, prompts, outputs)
    got = sb.penalties.apply(logits)
    for i, p in enumerate(params):
        torch.testing.assert_close(got[i], _reference(logits[i], p, prompts[i], outputs[i]))
    assert torch.equal(got[4], logits[4])
    ref_tokens = torch.stack([_reference(logits[i], p, prompts[i], outputs[i]) for i, p in enumerate(params)])
    assert sample(logits, sb).tolist() == ref_tokens.argmax(-1).tolist()


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(2)
    for penalty in (0.5, 1.3, 2.0):
        seq = torch.randint(0, V, (1, 25), generator=g)
        logits = torch.randn(1, V, generator=g) * 3
        expected = RepetitionPenaltyLogitsProcessor(penalty)(seq, logits.clone())
        prompt, output = seq[0, :15].tolist(), seq[0, 15:].tolist()
        sb = _batch([SamplingParams(repetition_penalty=penalty)], [prompt], [output])
        torch.testing.assert_close(sb.penalties.apply(logits), expected)


def test_no_penalty_batch_builds_nothing():
    sb = SamplingBatch.build([SamplingParams(), SamplingParams(temperature=0)], [1, 2], [3, 4], V, "cpu")
    assert sb.penalties is None
    with pytest.raises(ValueError, match="penalties"):
        SamplingBatch.build([SamplingParams(presence_penalty=1.0)], [1], [3], V, "cpu")


def test_penalised_sampling_is_seeded_and_batch_independent():
    g = torch.Generator().manual_seed(3)
    p = SamplingParams(temperature=1.0, frequency_penalty=1.0, logit_bias={1: 5.0})
    logits = torch.randn(1, V, generator=g)
    prompt, output = [1, 2, 3], [4, 4, 5]
    alone = sample(logits, _batch([p], [prompt], [output], [11])).item()
    other = SamplingParams(temperature=0.5, repetition_penalty=1.2)
    both = sample(torch.cat([torch.randn(1, V, generator=g), logits]),
                  _batch([other, p], [[9], prompt], [[9, 9], output], [5, 11]))
    assert both[1].item() == alone


@pytest.mark.parametrize("field,value", [
    ("presence_penalty", 2.01), ("presence_penalty", -2.5), ("presence_penalty", float("nan")),
    ("frequency_penalty", 3.0), ("frequency_penalty", float("inf")), ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0), ("repetition_penalty", float("inf")), ("repetition_penalty", float("nan")),
    ("logit_bias", {3: 100.5}), ("logit_bias", {3: float("nan")}), ("logit_bias", {-1: 1.0}),
    ("seed", 2**64), ("seed", -1), ("temperature", float("inf")), ("temperature", -1e-9),
    ("min_p", float("nan")), ("top_k", True),
])
def test_every_knob_validated_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_edges_accepted_and_vocab_checked():
    SamplingParams(presence_penalty=-2.0, frequency_penalty=2.0, repetition_penalty=1e-3,
                   logit_bias={0: -100.0, 39: 100.0}, seed=2**64 - 1).check_vocab(V)
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={V: 1.0}).check_vocab(V)


def test_u64_seed_samples_and_is_deterministic():
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(4))
    top = 2**64 - 1
    assert seed_bits(top) == -1 and seed_bits(2**63) == -(2**63) and seed_bits(2**63 - 1) == 2**63 - 1
    params = [SamplingParams(temperature=1.0, seed=top)] * 3
    draws = [sample(logits, SamplingBatch.build(params, [top] * 3, [5, 6, 7], V, "cpu")).tolist() for _ in range(2)]
    assert draws[0] == draws[1]
    many = {tuple(sample(logits, SamplingBatch.build(params, [s] * 3, [5, 6, 7], V, "cpu")).tolist())
            for s in (top, top - 1, 2**63, 1)}
    assert len(many) > 1  # the high seeds really feed the noise


@pytest.mark.parametrize("temp", [1e-37, 1e-6, 0.0])
def test_tiny_temperature_is_greedy(temp):
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(5))
    params = [SamplingParams(temperature=temp)] * 4
    sb = SamplingBatch.build(params, [1, 2, 3, 4], [9] * 4, V, "cpu")
    assert sb.all_greedy
    mixed = SamplingBatch.build(params[:2] + [SamplingParams(temperature=1.0)], [1, 2, 3], [9] * 3, V, "cpu")
    assert sample(logits, sb).tolist() == logits.argmax(-1).tolist()
    assert sample(logits[:3], mixed).tolist()[:2] == logits[:2].argmax(-1).tolist()
