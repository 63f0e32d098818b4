"""Compare two aligned runs tensor by tensor: passed / failed / shape mismatch / missing, and a summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import msgspec
import torch
from pdpair.engine.debug.aligner import Aligned, Table
from pdpair.engine.debug.format import forward_order

PASSED, FAILED, SHAPE, MISSING = "passed", "failed", "shape mismatch", "missing"
STATUSES = (PASSED, FAILED, SHAPE, MISSING)


@dataclass
class TensorResult:
    name: str
    status: str
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    first_key: str | None = None  # request id (or `step N rank R`) of the first differing row
    first_token: int | None = None  # its token position (or row index)
    detail: str = ""


@dataclass
class Report:
    results: list[TensorResult]
    atol: float
    rtol: float
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.counts = {s: sum(r.status == s for r in self.results) for s in STATUSES}

    @property
    def ok(self) -> bool:
        return bool(self.results) and self.counts[PASSED] == len(self.results)

    @property
    def first_failure(self) -> TensorResult | None:
        """The earliest divergence: among failed tensors the lowest token position, then forward order (a
        corrupted K/V page shows first in attention, not in the tokens sampled after it); else the first
        shape mismatch or missing tensor."""
        failed = [r for r in self.results if r.status == FAILED]
        if failed:
            return min(failed, key=lambda r: (r.first_token, forward_order(r.name)))
        return next((r for r in self.results if r.status != PASSED), None)

    def summary(self) -> str:
        c = self.counts
        line = (f"summary: {c[PASSED]} passed, {c[FAILED]} failed, {c[SHAPE]} shape mismatch, {c[MISSING]} "
                f"missing of {len(self.results)} tensors (atol={self.atol:g}, rtol={self.rtol:g})")
        first = self.first_failure
        if first is not None:
            line += f"; first difference: {first.name} ({first.status}"
            if first.first_token is not None:
                line += f", {first.first_key} token {first.first_token}"
            line += ")"
        elif not self.results:
            line += "; nothing to compare"
        return line

    def text(self) -> str:
        lines = [_line(r) for r in self.results]
        return "\n".join([*lines, self.summary()])

    def json(self) -> str:
        body = {"ok": self.ok, "atol": self.atol, "rtol": self.rtol, "counts": self.counts,
                "summary": self.summary(), "results": [asdict(r) for r in self.results]}
        return msgspec.json.format(msgspec.json.encode(body), indent=2).decode()


def _line(r: TensorResult) -> str:
    out = f"{r.status:<15} {r.name}"
    if r.max_abs_diff is not None:
        out += f"  max_abs={r.max_abs_diff:.3e} max_rel={r.max_rel_diff:.3e}"
    if r.status == FAILED:
        out += f"  first differing token: {r.first_key} position {r.first_token}"
    if r.detail:
        out += f"  ({r.detail})"
    return out


def compare(baseline: Table, target: Table, atol: float = 1e-3, rtol: float = 1e-3) -> Report:
    if atol < 0 or rtol < 0:
        raise ValueError(f"tolerances must be non-negative, got atol={atol} rtol={rtol}")
    results = []
    for name in sorted(baseline.keys() | target.keys(), key=forward_order):
        if name not in baseline or name not in target:
            side = "baseline" if name not in baseline else "target"
            results.append(TensorResult(name, MISSING, detail=f"not in the {side}"))
        else:
            results.append(_compare_one(name, baseline[name], target[name], atol, rtol))
    return Report(results, atol, rtol)


def _compare_one(name: str, base: dict[str, Aligned], tgt: dict[str, Aligned], atol: float,
                 rtol: float) -> TensorResult:
    keys = sorted(base.keys() | tgt.keys())
    absent = [k for k in keys if k not in base or k not in tgt]
    if absent:
        where = ", ".join(f"{k} ({'baseline' if k not in base else 'target'})" for k in absent[:3])
        return TensorResult(name, MISSING, detail=f"{len(absent)} key(s) on one side only: {where}")
    for k in keys:
        b, t = base[k], tgt[k]
        if b.tensor.shape != t.tensor.shape or b.positions != t.positions:
            return TensorResult(name, SHAPE, detail=f"{k}: baseline {_shape(b)} vs target {_shape(t)}")
    worst_abs = worst_rel = 0.0
    first: tuple[str, int] | None = None
    for k in keys:
        b, t = base[k].tensor.double(), tgt[k].tensor.double()
        diff = (b - t).abs()
        both_nan = b.isnan() & t.isnan()
        diff = torch.where(both_nan, torch.zeros_like(diff), diff.nan_to_num(nan=float("inf")))
        bad = ~(diff <= atol + rtol * b.abs().nan_to_num(nan=0.0))
        if diff.numel():
            worst_abs = max(worst_abs, diff.max().item())
            worst_rel = max(worst_rel, (diff / b.abs().clamp_min(1e-12)).max().item())
        rows = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero() if bad.dim() else bad.reshape(1).nonzero()
        if first is None and rows.numel():
            first = (k, base[k].positions[int(rows[0])] if bad.dim() else 0)
    if first is None:
        return TensorResult(name, PASSED, worst_abs, worst_rel)
    return TensorResult(name, FAILED, worst_abs, worst_rel, first[0], first[1])


def _shape(a: Aligned) -> str:
    pos = a.positions
    span = f"positions {pos[0]}..{pos[-1]}" if pos else "no positions"
    return f"{list(a.tensor.shape)} {span}"
